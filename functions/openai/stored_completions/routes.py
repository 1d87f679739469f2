"""Stored chat completions: ``GET/POST/DELETE /v1/chat/completions[/{id}[/messages]]``.

A chat completion sent with ``store: true`` is listed here (``functions.core.stored_completions``);
its id, ``chatcmpl-<hex>``, is its reply's message UUID, the same id the completion was
answered with. What it shows is read from the conversation's rows: the answer, usage
and model from the reply, the messages it was asked with from the history before it.
Another key's completion is the same 404 as a missing one, after the same lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from functions.core.errors import InvalidInputError, NotFoundError
from functions.core.keys.schemas import Principal
from functions.core.stored_completions import service as completions
from functions.core.web.admission import QUERY_PREFIXES_OPT
from functions.core.web.docs import errors
from functions.core.web.policy import OPENAI
from functions.openai.ids import IdKind, format_id, parse_id
from functions.openai.metadata import MAX_PAIRS, Metadata, check_metadata
from functions.openai.paging import After, Limit, OrderBy, page

if TYPE_CHECKING:
    import uuid

    from functions.core.stored_completions.service import StoredCompletion

CompletionPath = Annotated[
    str, PathParameter(description="A stored chat completion's id (`chatcmpl-...`)")
]
# ``metadata[key]=value`` filters: names the route cannot declare one by one.
METADATA_QUERY = "metadata["
ROUTE_OPT = {QUERY_PREFIXES_OPT: (METADATA_QUERY,)}


class CompletionUpdateBody(msgspec.Struct, kw_only=True):
    metadata: Metadata | None


def _missing(text: str) -> NotFoundError:
    return NotFoundError(f"Chat completion with id '{text}' not found.", details={"id": text})


def completion_out(completion: StoredCompletion) -> dict[str, Any]:
    """``chat.completion`` as OpenAI returns a stored one, from its reply."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": completion.content if completion.content or not completion.tool_calls else None,
        "refusal": None,
    }
    if completion.tool_calls:
        message["tool_calls"] = completion.tool_calls
    usage = None
    if completion.prompt_tokens is not None and completion.completion_tokens is not None:
        usage = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        }
    return {
        "id": format_id(IdKind.CHAT_COMPLETION, completion.id),
        "object": "chat.completion",
        "created": int(completion.created_at.timestamp()),
        "model": completion.model or "",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": usage,
        "metadata": completion.metadata,
        "switchboard": {
            "conversation_id": str(completion.conversation_id),
            "reply_id": str(completion.id),
        },
    }


async def _found(owner: uuid.UUID, text: str) -> StoredCompletion:
    found = await completions.get(owner, parse_id(IdKind.CHAT_COMPLETION, text))
    if found is None:
        raise _missing(text)
    return found


def _metadata_filters(request: Request[Any, Any, Any]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for name, value in request.query_params.items():
        if name.startswith(METADATA_QUERY) and name.endswith("]"):
            filters[name[len(METADATA_QUERY) : -1]] = value
    if len(filters) > MAX_PAIRS:
        raise InvalidInputError(
            f"at most {MAX_PAIRS} metadata filters", details={"field": "metadata"}
        )
    # A filter's key or value is held to what metadata may hold: a NUL in a key reached
    # PostgreSQL's jsonb path as text and was a 500.
    return check_metadata(filters)


@get(
    "/chat/completions",
    summary="List stored chat completions",
    responses=errors(404, policy=OPENAI),
    opt=ROUTE_OPT,
)
async def list_completions(
    *,
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    model: Annotated[str | None, QueryParameter(description="Only this model's")] = None,
    after: After = None,
    limit: Limit = 20,
    order: OrderBy = "asc",
) -> dict[str, Any]:
    """Chat completions sent with ``store: true``, oldest first by default; filtered by
    ``model`` and by every ``metadata[key]=value`` given."""
    owner = principal.key_id
    start = None if after is None else await _found(owner, after)
    found = await completions.list_completions(
        owner,
        model=model,
        metadata=_metadata_filters(request),
        after=start,
        limit=limit + 1,
        order=order,
    )
    return page([completion_out(c) for c in found[:limit]], has_more=len(found) > limit)


@get(
    "/chat/completions/{completion_id:str}",
    summary="Retrieve a stored chat completion",
    responses=errors(404, policy=OPENAI),
)
async def retrieve_completion(
    completion_id: CompletionPath, principal: NamedDependency[Principal]
) -> dict[str, Any]:
    return completion_out(await _found(principal.key_id, completion_id))


@post(
    "/chat/completions/{completion_id:str}",
    summary="Update a stored chat completion's metadata",
    status_code=200,
    responses=errors(404, 413, 415, policy=OPENAI),
)
async def update_completion(
    completion_id: CompletionPath,
    data: JSONBody[CompletionUpdateBody],
    principal: NamedDependency[Principal],
) -> dict[str, Any]:
    """``metadata`` replaces the completion's (null clears it), as at OpenAI."""
    updated = await completions.update_metadata(
        principal.key_id,
        parse_id(IdKind.CHAT_COMPLETION, completion_id),
        check_metadata(data.metadata),
    )
    if updated is None:
        raise _missing(completion_id)
    return completion_out(updated)


@delete(
    "/chat/completions/{completion_id:str}",
    summary="Delete a stored chat completion",
    status_code=200,
    responses=errors(404, policy=OPENAI),
)
async def delete_completion(
    completion_id: CompletionPath, principal: NamedDependency[Principal]
) -> dict[str, Any]:
    """Unlists it: the exchange stays in its conversation (delete that to delete it)."""
    if not await completions.delete(
        principal.key_id, parse_id(IdKind.CHAT_COMPLETION, completion_id)
    ):
        raise _missing(completion_id)
    return {"id": completion_id, "object": "chat.completion.deleted", "deleted": True}


def _store_message(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": format_id(IdKind.MESSAGE, message.id),
        "role": message.role,
        "content": message.content,
        "content_parts": message.content_parts,
    }
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = message.tool_calls
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


@get(
    "/chat/completions/{completion_id:str}/messages",
    summary="The messages a stored chat completion was asked with",
    responses=errors(404, policy=OPENAI),
)
async def list_messages(
    completion_id: CompletionPath,
    principal: NamedDependency[Principal],
    after: After = None,
    limit: Limit = 20,
    order: OrderBy = "asc",
) -> dict[str, Any]:
    """The request's messages (the history its client sent, then its new turns), first
    to last by default."""
    completion = await _found(principal.key_id, completion_id)
    messages = [_store_message(m) for m in await completions.request_messages(completion)]
    if order == "desc":
        messages.reverse()
    if after is not None:
        at = next((i for i, m in enumerate(messages) if m["id"] == after), None)
        if at is None:
            raise NotFoundError(
                f"Message with id '{after}' not found.", details={"field": "after", "id": after}
            )
        messages = messages[at + 1 :]
    return page(messages[:limit], has_more=len(messages) > limit)


ROUTES = [
    list_completions,
    retrieve_completion,
    update_completion,
    delete_completion,
    list_messages,
]
