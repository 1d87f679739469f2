"""A response as OpenAI shows it: the ``response`` object and its stream of events.

The object is written from stored state only (the reply row and the request fields
stored on it), so a created response, a retrieved one and the last event of a stream
are the same object. The stream's events are the ones openai-python's
``responses.stream(...)`` accumulates (``lib/streaming/responses``): ``response.created``
first, each item announced (``output_item.added``, ``content_part.added``) before its
deltas, closed (``...done``) before ``response.completed`` (or ``response.incomplete``,
``response.failed``), each with its ``sequence_number``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.chat.schemas import ReplyDelta, ReplyDone, ReplyFailed
from functions.core.errors import SwitchboardError
from functions.core.messages.schemas import MessageError, Usage
from functions.openai.failures import status_of
from functions.openai.ids import IdKind, format_id
from functions.openai.responses.items import message_item, output_items, output_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from functions.core.chat.schemas import ChatEvent
    from functions.core.llm.schemas import ChatDone, ChatResult
    from functions.core.messages.schemas import MessageOut

_encode = msgspec.json.encode
DEFAULT_TEXT = {"format": {"type": "text"}}


def _status(reply: MessageOut) -> tuple[str, dict[str, Any] | None]:
    if reply.status == "pending":
        return "in_progress", None
    if reply.status == "complete":
        if reply.finish_reason == "length":
            return "incomplete", {"reason": "max_output_tokens"}
        return "completed", None
    return ("failed" if reply.status == "failed" else "cancelled"), None


def _item_status(status: str) -> str:
    return {"completed": "completed", "in_progress": "in_progress"}.get(status, "incomplete")


def usage_of(reply: MessageOut) -> dict[str, Any] | None:
    usage = reply.usage
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    reply: MessageOut,
    request: dict[str, Any],
    *,
    output: list[dict[str, Any]] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """The ``response`` object for ``reply`` and the request fields stored with it;
    ``output`` and ``status`` replace what the reply says (a stream's first events)."""
    stated, incomplete = _status(reply)
    status = status or stated
    error = None
    if stated in ("failed", "cancelled") and reply.error is not None:
        error = {"code": reply.error.code, "message": reply.error.message}
    conversation = request.get("conversation")
    body: dict[str, Any] = {
        "id": format_id(IdKind.RESPONSE, reply.id),
        "object": "response",
        "created_at": int(reply.created_at.timestamp()),
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "model": reply.model or request.get("model") or "",
        "output": output_items(reply, _item_status(status)) if output is None else output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning"),
        "store": request.get("store", True),
        "temperature": request.get("temperature"),
        "text": request.get("text") or DEFAULT_TEXT,
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "usage": usage_of(reply) if status != "in_progress" else None,
        "user": request.get("user"),
        "conversation": {"id": conversation} if conversation else None,
    }
    if status == "completed" and reply.completed_at is not None:
        body["completed_at"] = int(reply.completed_at.timestamp())
    return body


class Events:
    """Writes one stream's events, numbering them (``sequence_number``) as it goes."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = _encode({"type": kind, "sequence_number": self._next, **fields})
        self._next += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


def _ending(events: Events, reply: MessageOut, request: dict[str, Any]) -> bytes:
    body = response_object(reply, request)
    kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
        body["status"], "response.failed"
    )
    return events(kind, response=body)


def _close_items(
    events: Events, reply: MessageOut, text_open: bool, start_index: int
) -> list[bytes]:
    """The done events of the reply's items: its text (opened by the deltas, or now when
    it has none but calls nothing), then each function call whole."""
    status = (
        "completed"
        if reply.status == "complete" and reply.finish_reason != "length"
        else "incomplete"
    )
    out: list[bytes] = []
    index = start_index
    item_id = format_id(IdKind.MESSAGE, reply.id)
    for item in output_items(reply, status):
        if item["type"] == "message":
            if not text_open:
                out.append(
                    events(
                        "response.output_item.added",
                        output_index=index,
                        item={**message_item(reply, "", "in_progress"), "content": []},
                    )
                )
                out.append(
                    events(
                        "response.content_part.added",
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        part=output_text(""),
                    )
                )
            text = item["content"][0]["text"]
            if not text_open and text:
                out.append(
                    events(
                        "response.output_text.delta",
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        delta=text,
                        logprobs=[],
                    )
                )
            out.append(
                events(
                    "response.output_text.done",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
            )
            out.append(
                events(
                    "response.content_part.done",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    part=output_text(text),
                )
            )
        else:
            out.append(
                events(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"},
                )
            )
            out.append(
                events(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=item["arguments"],
                )
            )
            out.append(
                events(
                    "response.function_call_arguments.done",
                    item_id=item_id,
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        out.append(events("response.output_item.done", output_index=index, item=item))
        index += 1
    return out


def opening(events: Events, reply: MessageOut, request: dict[str, Any]) -> list[bytes]:
    """``response.created`` and ``response.in_progress`` for a reply just claimed."""
    body = response_object(reply, request, output=[], status="in_progress")
    return [
        events("response.created", response=body),
        events("response.in_progress", response=body),
    ]


def _error_event(events: Events, error: dict[str, Any]) -> bytes:
    code = str(error.get("code", "llm_error"))
    return events(
        "error",
        code=code,
        message=str(error.get("message", "")),
        param=None,
        status=status_of(code),
    )


def _opened_text(events: Events, reply: MessageOut) -> list[bytes]:
    """The reply's text item announced, before its first delta."""
    return [
        events(
            "response.output_item.added",
            output_index=0,
            item={**message_item(reply, "", "in_progress"), "content": []},
        ),
        events(
            "response.content_part.added",
            item_id=format_id(IdKind.MESSAGE, reply.id),
            output_index=0,
            content_index=0,
            part=output_text(""),
        ),
    ]


def _delta(events: Events, reply: MessageOut, text: str) -> bytes:
    return events(
        "response.output_text.delta",
        item_id=format_id(IdKind.MESSAGE, reply.id),
        output_index=0,
        content_index=0,
        delta=text,
        logprobs=[],
    )


async def streamed(
    send: AsyncIterator[ChatEvent], reply: MessageOut, request: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The SSE body of a stored response whose reply was just claimed (``reply``):
    its text as it arrives, then its items closed and how it ended. Closing it closes
    the send, which aborts vLLM and stores the reply ``cancelled``."""
    events = Events()
    try:
        for data in opening(events, reply, request):
            yield data
        text_open = False
        async for event in send:
            if isinstance(event, ReplyDelta):
                if not text_open:
                    text_open = True
                    for data in _opened_text(events, reply):
                        yield data
                yield _delta(events, reply, event.text)
            elif isinstance(event, ReplyDone):
                for data in _close_items(events, event.message, text_open, 0):
                    yield data
                yield _ending(events, event.message, request)
                return
            elif isinstance(event, ReplyFailed):
                if event.message is None:
                    yield _error_event(events, event.error)
                else:
                    yield _ending(events, event.message, request)
                return
    finally:
        await send.aclose()  # type: ignore[attr-defined]


async def streamed_unstored(
    send: AsyncIterator[ReplyDelta | ChatDone], reply: MessageOut, request: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The SSE body of a response not stored (the send path's not-stored mode, streamed):
    the same events as :func:`streamed`, its reply (``reply``, an id naming no row) made
    from what arrived."""
    events = Events()
    parts: list[str] = []
    try:
        for data in opening(events, reply, request):
            yield data
        async for event in send:
            if isinstance(event, ReplyDelta):
                if not parts:
                    for data in _opened_text(events, reply):
                        yield data
                parts.append(event.text)
                yield _delta(events, reply, event.text)
                continue
            finished = unstored_reply(reply, "".join(parts), event)
            for data in _close_items(events, finished, bool(parts), 0):
                yield data
            yield _ending(events, finished, request)
    except SwitchboardError as exc:
        failed = msgspec.structs.replace(
            reply,
            content="".join(parts),
            status="failed",
            error=MessageError(code=exc.code, message=exc.message),
        )
        yield _ending(events, failed, request)
    finally:
        await send.aclose()  # type: ignore[attr-defined]


def unstored_reply(reply: MessageOut, content: str, done: ChatDone | ChatResult) -> MessageOut:
    """A reply not stored, as the upstream finished it."""
    usage = done.usage
    return msgspec.structs.replace(
        reply,
        content=content,
        tool_calls=done.tool_calls,
        status="complete",
        model=done.model,
        usage=None
        if usage is None
        else Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        ),
        finish_reason=done.finish_reason,
        completed_at=datetime.now(UTC),
    )


def whole_stream(reply: MessageOut, request: dict[str, Any]) -> list[bytes]:
    """A finished reply's whole stream at once (a response not stored, answered by the
    pipeline's not-stored mode, which gathers the reply before it returns)."""
    events = Events()
    pending = msgspec.structs.replace(reply, status="pending")
    out = opening(events, pending, request)
    out += _close_items(events, reply, False, 0)
    out.append(_ending(events, reply, request))
    return out
