"""The chat function: conversations, their messages, and sending a message to the model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream

from functions.core.chat.idempotency import (
    Idempotency,
    InProgressError,
    KeyReusedError,
    ReplayedFailureError,
    request_hash,
)
from functions.core.chat.recorder import ReplyNotRecordedError
from functions.core.chat.schemas import (
    ChatEvent,
    MessageSend,
    MessageStarted,
    ReplyDelta,
    ReplyDone,
    ReplyFailed,
    SendRequest,
    event_name,
    message_chars_problem,
)
from functions.core.chat.service import ChatService
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import (
    ConversationCreate,
    ConversationOut,
    ConversationUpdate,
)
from functions.core.db.errors import SchemaMissingError
from functions.core.errors import (
    InvalidInputError,
    ModelNotAllowedError,
    PayloadTooLargeError,
    SwitchboardError,
)
from functions.core.keys.schemas import Principal
from functions.core.limits.errors import QuotaExceededError, RateLimitedError
from functions.core.liveness.inflight import ShuttingDownError
from functions.core.llm.client import LLMClient
from functions.core.llm.errors import (
    LLMAuthError,
    LLMBadRequestError,
    ModelKindError,
    ModelNotFoundError,
    ModelNotServedError,
)
from functions.core.messages import service as messages
from functions.core.messages.claim import ConversationBusyError
from functions.core.messages.schemas import MessageOut, Turn
from functions.core.schemas import END, Page
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.core.web.auth import provide_principal
from functions.core.web.docs import Cursor, IdPath, errors, event_stream, parse_id
from functions.core.web.errors import request_id_of
from functions.core.web.policy import SWITCHBOARD
from functions.core.web.state import runtime_of, settings_of

REPLY_EXAMPLE = {
    "id": "0b8e7c52-61f4-4d4b-9a57-7f0f3c1e2d44",
    "conversation_id": "3f0c6a52-5b7e-4a3c-9d43-2b1f3f1e8a10",
    "seq": 2,
    "role": "assistant",
    "content": "Our Q3 plan focuses on three launches.",
    "status": "complete",
    "config": {"id": "a1d2c3b4-0000-4000-8000-000000000001", "name": "support", "version": 3},
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "usage": {"prompt_tokens": 42, "completion_tokens": 9, "total_tokens": 51},
    "latency_ms": 412.7,
    "ttft_ms": 88.1,
    "finish_reason": "stop",
    "error": None,
    "upstream_request_id": "chatcmpl-9b2f4c1de0a34f7e",
    "created_at": "2026-11-26T09:30:00.120000Z",
    "completed_at": "2026-11-26T09:30:00.533000Z",
}
SEND_EXAMPLES = [
    Example(summary="reply as one JSON object", value={"content": "Summarise our Q3 plan."}),
    Example(
        summary="streamed, with a lower temperature",
        value={"content": "Summarise our Q3 plan.", "stream": True, "temperature": 0.2},
    ),
]
ChatEvents = event_stream(
    "ChatEvents",
    {"message": MessageStarted, "delta": ReplyDelta, "done": ReplyDone, "error": ReplyFailed},
)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# What a send can answer besides what every route can, documented under each status.
SEND_ERRORS: dict[type[SwitchboardError], str] = {
    LLMBadRequestError: "vLLM refused the request as invalid (its message says why)",
    ModelKindError: (
        "the configuration's model is an embedding model (served from "
        "SWITCHBOARD_EMBEDDING_URLS): it cannot generate a reply"
    ),
    ModelNotServedError: (
        "no upstream serves the configuration's model (`details.known_models` lists those "
        "served): PUT the configuration with one of them"
    ),
    ModelNotFoundError: "the upstream that listed the model no longer serves it",
    ConversationBusyError: (
        "a reply is being generated in this conversation: retry after `Retry-After`"
    ),
    KeyReusedError: (
        "this `Idempotency-Key` was used with another body or conversation: a new send "
        "needs a new key"
    ),
    InProgressError: (
        "the first send with this `Idempotency-Key` is still being answered: retry with "
        "the same key after `Retry-After` to get its result"
    ),
    ReplayedFailureError: (
        "the first send with this `Idempotency-Key` ended without a reply "
        "(`details.first_error`): send again with a new key. Streamed, the same replay is a "
        "200 whose events are `message`, then `error` with this code"
    ),
    LLMAuthError: "vLLM refused the gateway's own API key: the gateway is misconfigured",
    ReplyNotRecordedError: (
        "the reply was generated but the database did not take it: its text is in "
        "`details`, your message is stored, and this gateway keeps writing the reply"
    ),
    ShuttingDownError: (
        "this gateway process is stopping (a deploy or a restart): retry, another process answers"
    ),
    SchemaMissingError: "the database is not migrated: run `switchboard db migrate`",
    ModelNotAllowedError: (
        "this key may not use the conversation's configuration or its model (the key's "
        "allowed_configs or allowed_models): an admin can change them"
    ),
    RateLimitedError: (
        "over one of the key's rates (requests or tokens per minute) or concurrency caps, "
        "or the configuration's: retry after `Retry-After` (nothing was stored)"
    ),
    QuotaExceededError: (
        "the key's daily or monthly token budget is spent (`x-should-retry: false`): "
        "nothing was stored; an admin can raise it"
    ),
}
_encoder = msgspec.json.Encoder()


def provide_chat(state: State) -> ChatService:
    return runtime_of(state).chat


@post("/", summary="Start a conversation", responses=errors(404, 413, 415))
async def create_conversation(
    data: JSONBody[ConversationCreate], principal: NamedDependency[Principal]
) -> ConversationOut:
    """``config`` names an LLM configuration; left out, the default configuration is used,
    and with no default set that is a 400 naming ``config``."""
    return await conversations.create_conversation(principal.key_id, data, require_config=True)


@get("/", summary="Your conversations, most recent first", responses=errors())
async def list_conversations(
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    limit: Annotated[int, QueryParameter(ge=1, le=200, description="Page size")] = 50,
    cursor: Cursor = None,
) -> Page[ConversationOut]:
    """At most ``limit`` conversations and about SWITCHBOARD_MAX_PAGE_BYTES of them (always at
    least one); ``next_cursor`` says there is more."""
    return await conversations.list_conversations(
        principal.key_id,
        limit=limit,
        cursor=cursor,
        max_bytes=settings_of(request.app.state).max_page_bytes,
    )


@get("/{conversation_id:str}", summary="Get a conversation", responses=errors(404))
async def get_conversation(
    conversation_id: IdPath, principal: NamedDependency[Principal]
) -> ConversationOut:
    return await conversations.get_conversation(principal.key_id, conversation_id)


@patch(
    "/{conversation_id:str}",
    summary="Change title, metadata or config",
    responses=errors(404, 413, 415),
)
async def update_conversation(
    conversation_id: IdPath,
    data: JSONBody[ConversationUpdate],
    principal: NamedDependency[Principal],
) -> ConversationOut:
    return await conversations.update_conversation(principal.key_id, conversation_id, data)


@delete(
    "/{conversation_id:str}",
    summary="Delete a conversation and its messages",
    responses=errors(404),
)
async def delete_conversation(
    conversation_id: IdPath,
    principal: NamedDependency[Principal],
    chat: NamedDependency[ChatService],
) -> None:
    """A reply still being generated is aborted; its client gets a `not_found` error."""
    await chat.delete_conversation(principal.key_id, parse_id(conversation_id, "conversation"))


@get("/{conversation_id:str}/messages", summary="Messages in order", responses=errors(404))
async def list_messages(
    conversation_id: IdPath,
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    limit: Annotated[int, QueryParameter(ge=1, le=500, description="Page size")] = 100,
    cursor: Cursor = None,
) -> Page[MessageOut]:
    """At most ``limit`` messages and about SWITCHBOARD_MAX_PAGE_BYTES of them (always at
    least one): a page of long messages is shorter, and ``next_cursor`` says there is more."""
    return await messages.list_messages(
        principal.key_id,
        conversation_id,
        limit=limit,
        cursor=cursor,
        max_bytes=settings_of(request.app.state).max_page_bytes,
    )


def _sse(event: ChatEvent, request_id: str | None) -> bytes:
    if isinstance(event, ReplyFailed):
        # The same request id as every other error body, to quote when reporting it.
        event = msgspec.structs.replace(event, error={**event.error, "request_id": request_id})
    return b"event: " + event_name(event).encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"


async def _event_stream(
    first: ChatEvent, rest: AsyncIterator[ChatEvent], request_id: str | None
) -> AsyncIterator[bytes]:
    yield _sse(first, request_id)
    async for event in rest:
        yield _sse(event, request_id)


@post(
    "/{conversation_id:str}/messages",
    summary="Send a message and get the model's reply",
    status_code=201,
    responses={
        201: ResponseSpec(
            data_container=MessageOut,
            examples=[Example(summary="the stored reply", value=REPLY_EXAMPLE)],
            description="Non-streaming (`stream` false or left out): the stored reply.",
        ),
        200: ResponseSpec(
            data_container=ChatEvents,
            media_type="text/event-stream",
            generate_examples=False,
            description=(
                "With `stream: true`: server-sent events `message` (both stored messages), "
                "`delta` (`{text}`), then `done` (`{message}`, the stored reply with usage) "
                "or `error` (`{error: {code, message, details, request_id}, message}`). "
                "Once the stream has begun, every failure is an `error` event, never a "
                "status: the model's errors, `shutting_down`, `reply_not_recorded`; and a "
                "send replayed with an `Idempotency-Key` whose first send failed is a 200 "
                "with `message`, then `error` (`idempotent_request_failed`)."
            ),
        ),
        **errors(404, 409, 413, 415, 502, 504, codes=SEND_ERRORS),
    },
)
async def send_message(
    *,
    conversation_id: IdPath,
    data: Annotated[MessageSend, Body(examples=SEND_EXAMPLES)],
    principal: NamedDependency[Principal],
    chat: NamedDependency[ChatService],
    request: Request[Any, Any, Any],
    idempotency_key: Annotated[
        str | None,
        HeaderParameter(
            name="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+" + END,
            description=(
                "Retry safely: the same key and body again return the first send's result "
                "(or its current state) instead of storing the message twice. Visible ASCII, "
                "at most 255 characters; remembered for SWITCHBOARD_IDEMPOTENCY_WINDOW_S."
            ),
        ),
    ] = None,
) -> Response[Any]:
    """Stores your message and a pending reply first, so nothing is lost if vLLM fails.

    On failure the reply is stored as ``failed`` and the error names its cause:
    ``llm_unavailable`` (503), ``llm_timeout`` (504), ``context_length_exceeded`` (400),
    ``llm_error`` (502). With an ``Idempotency-Key``, a retry of a send gets that send's
    result (or a 409 saying where it stands) instead of storing the message twice.
    """
    conversation = parse_id(conversation_id, "conversation")
    if idempotency_key is not None and len(request.headers.getall("idempotency-key")) > 1:
        raise InvalidInputError(
            "Idempotency-Key is given more than once: give one key per send",
            details={"field": "Idempotency-Key", "source": "header"},
        )
    limit = settings_of(request.app.state).max_message_chars
    if (too_long := message_chars_problem(data.content, limit)) is not None:
        raise PayloadTooLargeError(
            f"content {too_long}", details={"field": "content", "limit_chars": limit}
        )
    send = SendRequest(
        owner=principal.key_id,
        access=principal.access,
        conversation_id=conversation,
        turns=[Turn(role="user", content=data.content)],
        sampling=data.overrides(),
        request_id=request_id_of(request),
        idempotency=None
        if idempotency_key is None
        else Idempotency(
            key=idempotency_key,
            request_hash=request_hash("chat.send", str(conversation), data),
        ),
    )
    if not data.stream:
        return Response(await chat.send(send), status_code=201)
    events = chat.stream(send)
    # Run up to the first event here, so "not found" or "busy" is an HTTP error, not an
    # SSE event after a 200.
    first = await anext(events)
    return Stream(
        _event_stream(first, events, request_id_of(request)),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        status_code=200,
    )


# Switchboard's own API: its error shape, unknown body fields refused.
router = SWITCHBOARD.router(
    path="/v1/conversations",
    route_handlers=[
        create_conversation,
        list_conversations,
        get_conversation,
        update_conversation,
        delete_conversation,
        list_messages,
        send_message,
    ],
    dependencies={
        "principal": Provide(provide_principal),
        "chat": Provide(provide_chat, sync_to_thread=False),
    },
    tags=["chat"],
    security=[{"BearerAuth": []}],
)


def create_app(settings: Settings | None = None, *, llm: LLMClient | None = None) -> Litestar:
    return build_app("chat", [router], settings=settings, uses_llm=True, llm=llm)
