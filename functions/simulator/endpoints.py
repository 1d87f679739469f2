"""The small vLLM endpoints: probes, ``/version``, ``/load``, ``/v1/models``, tokenizer,
``/metrics``. The generating endpoints are ``chat_endpoint.py`` and
``text_completion_endpoint.py`` over ``generation.py``; embeddings are ``embeddings.py``."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, TypeVar

import msgspec

from functions.simulator import SIMULATOR_NAME, VLLM_VERSION
from functions.simulator.asgi import Receive, Scope, Send, header, read_body, send_bytes, send_empty
from functions.simulator.chat import render_prompt
from functions.simulator.errors import ApiError, bad_request, error_body, invalid_request
from functions.simulator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from functions.simulator.planning import resolve_model
from functions.simulator.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    ModelPermission,
    TokenizeRequest,
    TokenizeResponse,
)
from functions.simulator.text import BOS, tokenize

if TYPE_CHECKING:
    from functions.simulator.state import SimulatorState

_VERSION_BODY = msgspec.json.encode(
    {
        "version": VLLM_VERSION,
        "simulator": SIMULATOR_NAME,
        "note": "a test double of vLLM's HTTP API, not vLLM",
    }
)
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


def _decode_as(body: bytes, shape: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=shape, strict=False)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise invalid_request(str(exc)) from None


def _require_json(scope: Scope) -> None:
    content_type = header(scope, b"content-type") or b""
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        raise invalid_request("Unsupported Media Type: Only 'application/json' is allowed")


class Endpoints:
    """Handlers bound to one app's state; each is ``async (scope, receive, send)``."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state
        self._legacy = state.options.legacy_errors

    async def _send_error(self, send: Send, error: ApiError) -> None:
        await send_bytes(send, error.status, error_body(error, legacy=self._legacy))

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/health`` and ``/ping``: empty 200, or empty 503 once the engine is dead."""
        await send_empty(send, 200 if self._state.healthy else 503)

    async def version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, _VERSION_BODY)

    async def load(self, scope: Scope, receive: Receive, send: Send) -> None:
        # vLLM reports 0 unless --enable-server-load-tracking; the in-flight count is more
        # useful to a test and is what that flag reports.
        in_flight = self._state.counts.chat_in_flight
        await send_bytes(send, 200, b'{"server_load":%d}' % in_flight)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        options = self._state.options
        now = int(time.time())
        cards = [
            ModelCard(
                id=name,
                created=now,
                root=options.models[0],
                max_model_len=options.max_model_len,
                permission=[ModelPermission(id=f"modelperm-{secrets.token_hex(16)}", created=now)],
            )
            for name in options.models
        ]
        await send_bytes(send, 200, _encode(ModelList(data=cards)))

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._state.metrics.render(), METRICS_CONTENT_TYPE)

    async def tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/tokenize``: prompt text, or chat messages rendered as the chat endpoint does."""
        body = await read_body(receive)
        state = self._state
        try:
            _require_json(scope)
            request = _decode_as(body, TokenizeRequest)
            resolve_model(request.model, state.options.models)
            if request.messages is not None:
                text = render_prompt(
                    request.messages, add_generation_prompt=request.add_generation_prompt
                )
                # The chat template already holds the special tokens it needs.
                add_special = bool(request.add_special_tokens)
            elif request.prompt is not None:
                text = request.prompt
                add_special = request.add_special_tokens is not False
            else:
                raise invalid_request("Either `prompt` or `messages` must be given.")
        except ApiError as error:
            await self._send_error(send, error)
            return
        pieces = tokenize(text)
        if add_special:
            pieces.insert(0, BOS)
        response = TokenizeResponse(
            count=len(pieces),
            max_model_len=state.options.max_model_len,
            tokens=state.vocabulary.encode(pieces),
            token_strs=pieces if request.return_token_strs else None,
        )
        await send_bytes(send, 200, _encode(response))

    async def detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        state = self._state
        try:
            _require_json(scope)
            request = _decode_as(body, DetokenizeRequest)
            resolve_model(request.model, state.options.models)
            try:
                text = state.vocabulary.decode(request.tokens)
            except IndexError as exc:
                message = f"Token id {exc.args[0]} is out of vocabulary"
                raise bad_request(message, "tokens") from None
        except ApiError as error:
            await self._send_error(send, error)
            return
        await send_bytes(send, 200, _encode(DetokenizeResponse(prompt=text)))
