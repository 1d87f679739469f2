"""The Responses routes: thin handlers over ``send`` (the pipeline's send), ``render``
(the objects and events) and ``functions.core.responses`` (the stored responses)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Stream

from functions.chat.app import SSE_HEADERS
from functions.core.chat.schemas import MessageStarted, ReplyDone, ReplyFailed
from functions.core.chat.service import ChatService
from functions.core.errors import InvalidInputError, NotFoundError
from functions.core.keys.schemas import Principal
from functions.core.messages.schemas import MessageOut
from functions.core.responses import service as responses
from functions.core.web.docs import errors
from functions.core.web.errors import request_id_of
from functions.core.web.policy import OPENAI
from functions.core.web.state import runtime_of, settings_of
from functions.openai.completion import placement, placement_headers
from functions.openai.config_names import config_names
from functions.openai.failures import raised
from functions.openai.ids import IdKind, parse_id
from functions.openai.paging import After, Limit, OrderBy, page
from functions.openai.responses import render
from functions.openai.responses.items import stored_items
from functions.openai.responses.schemas import ResponseCreate
from functions.openai.responses.send import Planned, plan

ResponseId = Annotated[str, PathParameter(max_length=100, description="A response id (`resp_...`)")]
_decode = msgspec.json.decode


@post(
    "/responses",
    summary="Create a response (OpenAI's Responses API)",
    status_code=200,
    responses=errors(404, 409, 413, 502, 504, policy=OPENAI),
)
async def create_response(
    *,
    data: JSONBody[ResponseCreate],
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    chat: NamedDependency[ChatService],
) -> Response[Any]:
    """A response, streamed (Responses events) or not, stored as an exchange of a
    conversation of your key (unless ``store`` is false); ``previous_response_id``
    continues one, ``conversation`` appends to one."""
    state = request.app.state
    raw = _decode(await request.body())
    config = await config_names(state).config_for(data.model, principal.access)
    if config is None:
        await runtime_of(state).require_llm().require_model(data.model)
    planned = await plan(
        data,
        raw if isinstance(raw, dict) else {},
        owner=principal.key_id,
        access=principal.access,
        config=config,
        settings=settings_of(state),
        request_id=request_id_of(request),
    )
    if not planned.store:
        return await _unstored(planned, chat, stream=bool(data.stream))
    events = chat.stream(planned.send)
    try:
        started = await anext(events)
        if not isinstance(started, MessageStarted):
            raise RuntimeError(f"the send path began with {type(started).__name__}")
        reply = started.assistant_message
        await responses.record_request(reply.id, planned.fields)
        headers = placement_headers(started)
        if data.stream:
            return Stream(
                render.streamed(events, reply, planned.fields),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
                status_code=200,
            )
        async for event in events:
            if isinstance(event, ReplyDone):
                body = render.response_object(event.message, planned.fields)
                body["switchboard"] = placement(started)
                return Response(body, status_code=200, headers=headers)
            if isinstance(event, ReplyFailed):
                raise raised(event.error, headers)
        raise RuntimeError("the send path ended without a reply")
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise


async def _unstored(planned: Planned, chat: ChatService, *, stream: bool) -> Response[Any]:
    """``store: false``: the pipeline's not-stored mode, its reply shown under an id that
    names no row (so it cannot be retrieved, continued or referenced)."""
    send = planned.send
    now = datetime.now(UTC)
    reply = MessageOut(
        id=uuid.uuid4(),
        conversation_id=send.conversation_id or uuid.UUID(int=0),
        seq=0,
        role="assistant",
        content="",
        status="pending",
        model=send.target.model,
        created_at=now,
    )
    if stream:
        return Stream(
            render.streamed_unstored(
                chat.stream_unstored(send, planned.config, model=send.target.model),
                reply,
                planned.fields,
            ),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            status_code=200,
        )
    result = await chat.ask_unstored(send, planned.config, model=send.target.model)
    finished = render.unstored_reply(reply, result.content, result)
    return Response(render.response_object(finished, planned.fields), status_code=200)


async def _stored(principal: Principal, response_id: str) -> responses.StoredResponse:
    stored = await responses.get_response(principal.key_id, parse_id(IdKind.RESPONSE, response_id))
    if stored is None:
        raise responses.not_found(response_id)
    return stored


@get(
    "/responses/{response_id:str}",
    summary="Retrieve a response",
    responses=errors(404, policy=OPENAI),
)
async def retrieve_response(
    response_id: ResponseId,
    principal: NamedDependency[Principal],
    stream: Annotated[bool, QueryParameter(description="Not supported: see below")] = False,
) -> dict[str, Any]:
    """A stored response of your key: its status, output and usage as stored now (one in
    progress shows ``in_progress``). Streaming a response again (``stream=true``) is for
    background responses, which this gateway does not run: a 400."""
    stored = await _stored(principal, response_id)
    if stream:
        raise InvalidInputError(
            "stream=true retrieves a background response's events, and this gateway runs "
            "no background responses: retrieve it without stream",
            details={"field": "stream"},
        )
    return render.response_object(stored.reply, stored.request)


@delete(
    "/responses/{response_id:str}",
    summary="Delete a response",
    status_code=200,
    responses=errors(404, 409, policy=OPENAI),
)
async def delete_response(
    response_id: ResponseId, principal: NamedDependency[Principal]
) -> dict[str, Any]:
    """Deletes the response's reply and the input items stored with it; the exchanges
    before it (the history it continued) stay."""
    await responses.delete_response(
        principal.key_id, parse_id(IdKind.RESPONSE, response_id), response_id
    )
    return {"id": response_id, "object": "response", "deleted": True}


@get(
    "/responses/{response_id:str}/input_items",
    summary="A response's input items",
    responses=errors(404, policy=OPENAI),
)
async def list_input_items(
    response_id: ResponseId,
    principal: NamedDependency[Principal],
    after: After = None,
    limit: Limit = 20,
    order: OrderBy = "desc",
) -> dict[str, Any]:
    """The items this request sent (not the history it continued), ``order`` by their
    place in the conversation, ``after`` an item id of the list."""
    stored = await _stored(principal, response_id)
    after_seq = None
    if after is not None:
        after_seq = await _seq_of(principal, stored, after)
    rows = await responses.input_messages(stored, after_seq=after_seq, limit=limit + 1, order=order)
    more = len(rows) > limit
    return page([item for row in rows[:limit] for item in stored_items(row)], has_more=more)


async def _seq_of(principal: Principal, stored: responses.StoredResponse, after: str) -> int:
    row_id = parse_id(IdKind.MESSAGE, after)
    found = await responses.messages_of(principal.key_id, [row_id] if row_id else [])
    reply = stored.reply
    for message in found:
        if (
            message.conversation_id == reply.conversation_id
            and reply.seq - stored.input_count <= message.seq < reply.seq
        ):
            return message.seq
    raise NotFoundError(
        f"Item with id '{after}' is not an input item of this response.",
        details={"field": "after", "id": after},
    )


@post(
    "/responses/{response_id:str}/cancel",
    summary="Cancel a background response",
    status_code=200,
    responses=errors(400, 404, policy=OPENAI),
)
async def cancel_response(
    response_id: ResponseId, principal: NamedDependency[Principal]
) -> dict[str, Any]:
    """Only a background response can be cancelled, as at OpenAI, and this gateway runs
    none: a response in progress is cancelled by closing its stream or connection, which
    aborts vLLM and stores the reply ``cancelled``."""
    await _stored(principal, response_id)
    raise InvalidInputError(
        "Cannot cancel a synchronous response: only responses created with background=true "
        "can be cancelled, and this gateway runs none; close the request's connection "
        "(or stream) to cancel a response in progress",
        details={"id": response_id},
    )


ROUTES = [create_response, retrieve_response, delete_response, list_input_items, cancel_response]
