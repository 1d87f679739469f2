"""The OpenAI door: OpenAI's chat completions and model list over Switchboard.

Any OpenAI client works with only its base URL (``.../v1``) and key changed. Every
exchange goes through the one send path (``ChatService.stream_raw``): stored before vLLM
is called, recorded however it ends, readable through the chat API as a conversation of
the caller's key. Errors are OpenAI's shape with the statuses the SDKs map to their
exception classes; unknown body fields are passed on to vLLM, not refused.

``/v1/completions`` (``text_completions``) and ``/v1/embeddings`` (``embeddings``) sit
beside these handlers on the same router.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter, JSONBody, PathParameter

from functions.chat.app import provide_chat
from functions.core.chat.idempotency import Idempotency, request_hash
from functions.core.chat.schemas import SendRequest
from functions.core.chat.service import ChatService
from functions.core.errors import ModelNotAllowedError
from functions.core.keys.schemas import Principal
from functions.core.llm.client import LLMClient
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.core.web.auth import provide_principal
from functions.core.web.docs import errors
from functions.core.web.errors import request_id_of
from functions.core.web.policy import OPENAI
from functions.core.web.state import runtime_of, settings_of
from functions.openai import chat_request, models, placement
from functions.openai.answer import answered
from functions.openai.completion import ChunkFacts, chunk_id, completion_body
from functions.openai.config_names import config_names
from functions.openai.conversations.routes import ROUTES as CONVERSATION_ROUTES
from functions.openai.embeddings import NOT_ALLOWED, create_embeddings
from functions.openai.headers import TITLE_CHARS, IdempotencyKey
from functions.openai.responses.routes import ROUTES as RESPONSES_ROUTES
from functions.openai.schemas import ChatCompletionCreate, ModelList, ModelOut
from functions.openai.stored_completions import store
from functions.openai.stored_completions.routes import ROUTES as STORED_COMPLETION_ROUTES
from functions.openai.text_completions import create_completion

ConversationHeader = Annotated[
    str | None,
    HeaderParameter(
        name=placement.HEADER,
        max_length=64,
        description="A conversation id of yours to append to (its history plus new turns), "
        "or `new`; left out, the history is threaded: appended to the conversation it "
        "extends, a branch of one it parts from, or a new conversation.",
    ),
]


def _title(data: ChatCompletionCreate) -> str:
    for message in data.messages:
        if message.role == "user" and isinstance(message.content, str):
            return message.content[:TITLE_CHARS]
    return ""


@post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    status_code=200,
    responses=errors(
        404, 409, 413, 415, 502, 504, codes={ModelNotAllowedError: NOT_ALLOWED}, policy=OPENAI
    ),
)
async def create_chat_completion(
    *,
    data: JSONBody[ChatCompletionCreate],
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    chat: NamedDependency[ChatService],
    conversation: ConversationHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    """OpenAI's request and answer, streamed (vLLM's chunks relayed) or not; every field
    vLLM accepts reaches it. ``model`` is a configuration (``name``, ``name@version``) or a
    served model. The exchange is stored; ``X-Switchboard-Conversation`` (and the body's
    ``switchboard`` field) say where."""
    choices = chat_request.choices(data.n)
    sent = await request.body()
    raw = chat_request.fields_but_messages(sent)
    chat_request.check_stream_options(raw)
    listed = store.requested(raw, principal.key_id)
    config = await config_names(request.app.state).config_for(data.model, principal.access)
    if config is None:
        llm = runtime_of(request.app.state).require_llm()
        await llm.require_model(data.model)  # an unknown model is a 404 before any store
    turns = chat_request.turns_of(data.messages, settings_of(request.app.state).max_message_chars)
    whole = SendRequest(
        owner=principal.key_id,
        access=principal.access,
        title=_title(data),
        turns=turns,
        prompt="exact",
        messages=chat_request.prompt(turns, config),
        target=chat_request.target(data.model, config),
        sampling=chat_request.sampling(data),
        extra=chat_request.extra_fields(raw),
        request_id=request_id_of(request),
        idempotency=None
        if idempotency_key is None
        else Idempotency(
            key=idempotency_key,
            request_hash=request_hash("openai.chat", conversation, msgspec.json.decode(sent)),
        ),
        choices=choices,
    )
    placed = await placement.placed(whole, conversation)
    return await answered(
        # Several choices are gathered by index from the relayed events; one read whole.
        chat.stream_raw(placed) if data.stream or choices > 1 else chat.gather_raw(placed),
        stream=bool(data.stream),
        options=data.stream_options,
        facts=ChunkFacts(wants_logprobs=bool(raw.get("logprobs"))),
        body=completion_body,
        chunk_id=chunk_id,
        on_started=listed,
    )


@get("/models", summary="Models: configurations and served models", responses=errors(policy=OPENAI))
async def list_models(state: State, principal: NamedDependency[Principal]) -> ModelList:
    """Configurations (``owned_by: switchboard``, by ``name`` and ``name@version``) and the
    models the upstreams in rotation serve, with their ``max_model_len``."""
    return await models.list_models(runtime_of(state).llm, principal.access)


@get(
    "/models/{model_id:path}",
    summary="One model: a configuration or a served model",
    responses=errors(404, policy=OPENAI),
)
async def retrieve_model(
    model_id: Annotated[
        str, PathParameter(description="A configuration (`name`, `name@version`) or a model")
    ],
    state: State,
    principal: NamedDependency[Principal],
) -> ModelOut:
    return await models.get_model(model_id.lstrip("/"), runtime_of(state).llm, principal.access)


# OpenAI's shape and tolerance: unknown body fields are ignored by the decoder (and passed
# on to vLLM from the raw body by the handler).
HANDLERS = [
    create_chat_completion,
    create_completion,
    create_embeddings,
    list_models,
    retrieve_model,
    *RESPONSES_ROUTES,
    *STORED_COMPLETION_ROUTES,
]
_ROUTER_OPTIONS: dict[str, Any] = {
    "dependencies": {
        "principal": Provide(provide_principal),
        "chat": Provide(provide_chat, sync_to_thread=False),
    },
    "tags": ["openai"],
    "security": [{"BearerAuth": []}],
}
router = OPENAI.router(path="/v1", route_handlers=HANDLERS, **_ROUTER_OPTIONS)
# ``/v1/conversations`` is the chat API's (its own shapes and UUID ids), so OpenAI's
# Conversations API is served under a base URL of the door's own, ``/openai/v1``, which
# also serves every route above (left out of the OpenAPI document, where ``/v1`` has them):
# a client whose base URL is ``/openai/v1`` has the whole OpenAI surface in one place.
mirror = OPENAI.router(
    path="/openai/v1", route_handlers=HANDLERS, include_in_schema=False, **_ROUTER_OPTIONS
)
conversations_router = OPENAI.router(
    path="/openai/v1", route_handlers=CONVERSATION_ROUTES, **_ROUTER_OPTIONS
)
ROUTERS = [router, mirror, conversations_router]


def create_app(settings: Settings | None = None, *, llm: LLMClient | None = None) -> Litestar:
    return build_app("openai", ROUTERS, settings=settings, uses_llm=True, llm=llm)
