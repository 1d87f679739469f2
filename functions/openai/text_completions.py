"""``POST /v1/completions``: OpenAI's legacy text completions, stored as conversations.

A completion is one send through the core pipeline (``ChatService.stream_raw``), stored as
a conversation of one user turn (the prompt) and one reply, readable through the chat API
like any other. vLLM's ``/v1/completions`` is asked with the ``prompt`` exactly as sent
(``SendRequest.completion_prompt``); every other field reaches it unchanged. Usage is
always asked of vLLM and stored, and stripped from a stream whose client did not ask.

One prompt per request: ``prompt`` as a string, a list of one string, token ids or a list
of one list of token ids. Several prompts are a 400 naming ``prompt``: vLLM answers them as
one response whose choices interleave in a stream, while the pipeline stores one reply per
send; splitting them into several conversations would store several exchanges for one
request and leave no single place to say where it was stored. Send one request each.
``Idempotency-Key`` works as on the chat API (a replayed stream is the stored reply as
completion chunks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from functions.core.chat.idempotency import Idempotency, request_hash
from functions.core.chat.schemas import SendRequest
from functions.core.chat.service import ChatService
from functions.core.errors import InvalidInputError, ModelNotAllowedError, PayloadTooLargeError
from functions.core.keys.schemas import Principal
from functions.core.llm.errors import ModelKindError
from functions.core.messages.schemas import Turn
from functions.core.schemas import check_value
from functions.core.web.docs import errors
from functions.core.web.errors import request_id_of
from functions.core.web.policy import OPENAI
from functions.core.web.state import runtime_of, settings_of
from functions.openai import chat_request
from functions.openai.answer import answered
from functions.openai.completion_schemas import CompletionCreate
from functions.openai.config_names import config_names
from functions.openai.embeddings import NOT_ALLOWED
from functions.openai.headers import TITLE_CHARS, IdempotencyKey
from functions.openai.relay import DONE, UsageWanted, frame
from functions.openai.text_completion_body import (
    CompletionFacts,
    replayed_completion_chunks,
    text_completion_body,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from functions.core.messages.schemas import MessageOut

SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "stop", "seed")
# vLLM's own words for an empty prompt.
EMPTY_PROMPT = "Either prompt or prompt_embeds must be provided and non-empty."
PROMPT_FORMS = (
    "prompt is a string, a list of strings, a list of token ids or a list of lists of token ids"
)


def _bad_prompt(message: str) -> InvalidInputError:
    return InvalidInputError(message, details={"field": "prompt"})


def _token_ids(value: list[Any]) -> bool:
    return all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def one_prompt(prompt: Any) -> str | list[int]:
    """The one prompt ``prompt`` holds, as text or token ids (see the module docstring)."""
    if isinstance(prompt, str):
        found: str | list[int] = prompt
    elif isinstance(prompt, list) and prompt and _token_ids(prompt):
        found = prompt
    elif isinstance(prompt, list) and all(
        isinstance(item, str) or (isinstance(item, list) and _token_ids(item)) for item in prompt
    ):
        found = _only(prompt)
    else:
        raise _bad_prompt(PROMPT_FORMS if prompt is not None else EMPTY_PROMPT)
    if not found:
        raise _bad_prompt(EMPTY_PROMPT)
    check_value(found, "prompt")
    return found


def _only(prompts: list[Any]) -> Any:
    if len(prompts) > 1:
        raise _bad_prompt(
            f"prompt holds {len(prompts)} prompts: Switchboard stores one exchange per "
            "request, so send one prompt per request"
        )
    return prompts[0] if prompts else ""


def prompt_turn(prompt: str | list[int], max_chars: int) -> Turn:
    """The stored user turn: the prompt's text, or its token ids as a part (the gateway
    has no tokenizer to spell them); a text over SWITCHBOARD_MAX_MESSAGE_CHARS is a 413."""
    if isinstance(prompt, list):
        return Turn(role="user", parts=[{"type": "token_ids", "token_ids": prompt}])
    if len(prompt) > max_chars:
        raise PayloadTooLargeError(
            f"prompt is {len(prompt)} characters; the limit is {max_chars} "
            "(SWITCHBOARD_MAX_MESSAGE_CHARS)",
            details={"field": "prompt", "limit_chars": max_chars},
        )
    return Turn(role="user", content=prompt)


def sampling(data: CompletionCreate) -> dict[str, Any]:
    """The request's own sampling fields: they override the configuration's."""
    chosen = {key: value for key in SAMPLING_KEYS if (value := getattr(data, key)) is not None}
    if data.user is not None:
        chosen["user"] = data.user
    return chosen


def extra_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The fields for vLLM as chat's (``guided_*`` rewritten, usage always asked), without
    ``prompt``: it is sent as given, from ``SendRequest.completion_prompt``."""
    extra = chat_request.extra_fields(raw)
    extra.pop("prompt", None)
    return extra


KIND_MISMATCH = "the model is an embedding model: it serves POST /v1/embeddings only"


async def replayed(reply: MessageOut, wanted: UsageWanted) -> AsyncIterator[bytes]:
    """The SSE body of a replayed stream: the stored reply as completion chunks."""
    for chunk in replayed_completion_chunks(reply, include_usage=wanted.include):
        yield frame(msgspec.json.encode(chunk))
    yield DONE


@post(
    "/completions",
    summary="Create a completion (OpenAI-compatible, legacy)",
    status_code=200,
    responses=errors(
        404,
        413,
        415,
        502,
        504,
        codes={ModelKindError: KIND_MISMATCH, ModelNotAllowedError: NOT_ALLOWED},
        policy=OPENAI,
    ),
)
async def create_completion(
    *,
    data: JSONBody[CompletionCreate],
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    chat: NamedDependency[ChatService],
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    """OpenAI's legacy completion, streamed (vLLM's chunks relayed) or not: ``prompt`` as
    a string or token ids, ``echo``, ``logprobs`` and every vLLM field pass through. Stored
    as a conversation of one user turn and one reply (the ``X-Switchboard-*`` headers and
    the body's ``switchboard`` field say where)."""
    chat_request.check_n(data.n)
    raw: dict[str, Any] = msgspec.json.decode(await request.body())
    chat_request.check_stream_options(raw)
    prompt = one_prompt(raw.get("prompt"))
    config = await config_names(request.app.state).config_for(data.model, principal.access)
    if config is None:
        await runtime_of(request.app.state).require_llm().require_model(data.model)
    turn = prompt_turn(prompt, settings_of(request.app.state).max_message_chars)
    send = SendRequest(
        owner=principal.key_id,
        access=principal.access,
        title=turn.content[:TITLE_CHARS],
        turns=[turn],
        prompt="exact",
        target=chat_request.target(data.model, config),
        sampling=sampling(data),
        extra=extra_fields(raw),
        request_id=request_id_of(request),
        completion_prompt=raw["prompt"],
        idempotency=None
        if idempotency_key is None
        else Idempotency(key=idempotency_key, request_hash=request_hash("openai.completions", raw)),
    )
    return await answered(
        chat.stream_raw(send) if data.stream else chat.gather_raw(send),
        stream=bool(data.stream),
        options=data.stream_options,
        facts=CompletionFacts(
            wants_every_chunk=raw.get("logprobs") is not None or bool(raw.get("return_token_ids"))
        ),
        body=text_completion_body,
        replayed=replayed,
    )
