"""``POST /v1/embeddings``, served only when the simulator runs an embedding model
(``--runner pooling``), as vLLM registers its pooling routes only for a pooling model.

Vectors are deterministic: seeded by the model and the input (its text, or its token ids),
unit length (vLLM normalizes by default), and rounded to float32 so the ``float`` and
``base64`` encodings carry the same numbers. ``dimensions`` truncates and renormalizes, as a
matryoshka model does, and is refused with vLLM's message by a model that is not one.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from array import array
from functools import lru_cache
from typing import TYPE_CHECKING

import msgspec

from functions.simulator.asgi import (
    JSON,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
    send_empty,
)
from functions.simulator.disconnect import DisconnectWatcher
from functions.simulator.errors import (
    SCALING,
    ApiError,
    bad_request,
    engine_dead,
    error_body,
    invalid_request,
)
from functions.simulator.faults import FaultKind
from functions.simulator.generation import SimulatedConnectionDrop, check_content_type
from functions.simulator.overrides import Timing, resolve_fault, resolve_timing, scan_headers
from functions.simulator.planning import check_context, decode_request, decoder, resolve_model
from functions.simulator.schemas import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from functions.simulator.text import BOS, render_chat, reply_seed, tokenize

if TYPE_CHECKING:
    from functions.simulator.options import SimulatorOptions
    from functions.simulator.state import SimulatorState
    from functions.simulator.text import TokenVocabulary

_encode = msgspec.json.Encoder().encode
_decode_embedding = decoder(EmbeddingRequest)
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407
_MASK64 = (1 << 64) - 1
_FAIL_AT_ONCE = frozenset({FaultKind.ERROR_500, FaultKind.EMPTY_500, FaultKind.CUT})
_NEVER_ANSWER = frozenset({FaultKind.HANG, FaultKind.STALL})
_INPUT_SHAPE = (
    "input must be a string, a list of strings, a list of token ids (integers >= 0) or a "
    "list of lists of token ids"
)


@lru_cache(maxsize=4096)
def _unit_vector(seed: int, size: int) -> tuple[float, ...]:
    state = seed & _MASK64
    values = []
    for _ in range(size):
        state = (state * _LCG_MULTIPLIER + _LCG_INCREMENT) & _MASK64
        values.append(((state >> 33) / 2**30) - 1.0)  # uniform in [-1, 1)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


def embedding_vector(model: str, key: object, size: int, dimensions: int | None) -> array[float]:
    """The float32 vector of one input: ``size`` long, or its first ``dimensions`` values
    renormalized."""
    vector = _unit_vector(reply_seed("embedding", model, key), size)
    if dimensions is not None and dimensions < size:
        head = vector[:dimensions]
        norm = math.sqrt(sum(v * v for v in head)) or 1.0
        vector = tuple(v / norm for v in head)
    return array("f", vector)


def _is_token(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and item >= 0


def embedding_inputs(
    request: EmbeddingRequest, vocabulary: TokenVocabulary
) -> list[tuple[object, int]]:
    """Each input's seed key and token count, in order."""
    if request.messages is not None and request.input is None:
        turns = [(m.role, m.text()) for m in request.messages]
        text = render_chat(turns, add_generation_prompt=False)
        # The chat form adds no special tokens unless asked: the template holds them.
        return [(text, len(tokenize(text)) + (1 if request.add_special_tokens else 0))]
    raw = request.input
    if raw is None:
        raise invalid_request("Object missing required field `input`", "input")
    bos = 0 if request.add_special_tokens is False else 1
    if isinstance(raw, str):
        return [(raw, len(tokenize(raw)) + bos)]
    if not raw:
        raise invalid_request("input must not be empty", "input")
    if all(isinstance(item, str) for item in raw):
        return [(item, len(tokenize(item)) + bos) for item in raw]
    if all(_is_token(item) for item in raw):
        return [_token_input(raw, vocabulary)]
    if all(isinstance(item, list) and all(_is_token(t) for t in item) for item in raw):
        return [_token_input(item, vocabulary) for item in raw]
    raise invalid_request(_INPUT_SHAPE, "input")


def _token_input(ids: list[int], vocabulary: TokenVocabulary) -> tuple[object, int]:
    try:
        pieces = vocabulary.pieces_of(ids)
    except IndexError as exc:
        raise bad_request(f"Token id {exc.args[0]} is out of vocabulary", "input") from None
    # Seeded by the text the ids spell, so ids from /tokenize embed like their text does.
    text = "".join(pieces[1:] if pieces and pieces[0] == BOS else pieces)
    return text, len(ids)


def check_dimensions(dimensions: int | None, options: SimulatorOptions) -> None:
    """vLLM's ``PoolingParams`` checks, with its messages."""
    if dimensions is None:
        return
    name = options.models[0]
    if not options.matryoshka:
        raise bad_request(
            f'Model "{name}" does not support matryoshka representation, changing output '
            f"dimensions will lead to poor results."
        )
    allowed = list(options.matryoshka_dimensions)
    if allowed:
        if dimensions not in allowed:
            raise bad_request(
                f"Model {name!r} only supports {allowed} matryoshka dimensions, use other "
                f"output dimensions will lead to poor results."
            )
    elif dimensions < 1:
        raise bad_request("Dimensions must be greater than 0")


class Embeddings:
    """The embeddings endpoint of one app (a pooling model's).

    ``--ttft-ms``/``X-Sim-TTFT-Ms`` is the time to the answer, raced against the client's
    disconnect; ``X-Sim-Fault`` and the dice apply as on the generating routes, with no
    tokens to count: ``cut`` is a 500, ``drop`` half a body, ``stall`` a ``hang``.
    """

    def __init__(self, state: SimulatorState) -> None:
        self._state = state
        options = state.options
        self._default_timing = Timing(options.ttft_ms / 1000.0, 0.0, options.tokens)

    async def _send_error(self, send: Send, error: ApiError) -> None:
        legacy = self._state.options.legacy_errors
        await send_bytes(send, error.status, error_body(error, legacy=legacy))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        options = state.options
        headers = scan_headers(scope)
        try:
            body = await read_body(receive)
        except ClientGone:
            state.counts.aborted += 1
            return
        if options.record_requests:
            # The same slot as the generating routes': a test sees what a gateway forwarded.
            state.last_chat_headers = scope["headers"]
            state.last_chat_body = body
        try:
            timing = resolve_timing(headers, self._default_timing)
            fault = resolve_fault(headers, state.dice)
            if fault.kind is FaultKind.SCALING_503:
                state.counts.count_fault(fault.label)
                await send_bytes(send, 503, SCALING)
                return
            check_content_type(headers.content_type)
            request, model, inputs = self._validate(body)
        except ApiError as error:
            await self._send_error(send, error)
            return
        metrics = state.metrics.by_model[model]
        if fault.kind is not FaultKind.NONE:
            state.counts.count_fault(fault.label)
        if fault.kind in _FAIL_AT_ONCE:
            metrics.finished["error"] += len(inputs)
            if fault.kind is FaultKind.EMPTY_500:
                await send_empty(send, 500)
            else:
                await self._send_error(send, engine_dead())
            return
        state.counts.chat_in_flight += 1  # vLLM's /load counts embedding requests too
        watcher = DisconnectWatcher(receive)
        try:
            answered = fault.kind not in _NEVER_ANSWER and await watcher.sleep(timing.ttft_s)
            if not answered:
                await watcher.until_disconnect()
                state.counts.aborted += 1
                metrics.finished["abort"] += len(inputs)
                return
            response = self._response(request, model, inputs, headers.request_id)
            if fault.kind is FaultKind.DROP:
                metrics.finished["error"] += len(inputs)
                await _send_half(send, response)
            metrics.prompt_tokens += sum(count for _, count in inputs)
            metrics.finished["stop"] += len(inputs)
            await send_bytes(send, 200, response)
        finally:
            state.counts.chat_in_flight -= 1
            watcher.close()

    def _validate(self, body: bytes) -> tuple[EmbeddingRequest, str, list[tuple[object, int]]]:
        """The request, its model and its inputs, checked in vLLM's order."""
        state = self._state
        options = state.options
        request = decode_request(body, _decode_embedding)
        model = resolve_model(request.model, options.models)
        inputs = embedding_inputs(request, state.vocabulary)
        for _, count in inputs:
            check_context(count, 0, options.max_model_len, "max_tokens")
        check_dimensions(request.dimensions, options)
        if not state.healthy:
            raise engine_dead()
        return request, model, inputs

    def _response(
        self,
        request: EmbeddingRequest,
        model: str,
        inputs: list[tuple[object, int]],
        raw_id: bytes | None,
    ) -> bytes:
        size = self._state.options.embedding_dim
        data: list[Embedding] = []
        for index, (key, _) in enumerate(inputs):
            vector = embedding_vector(model, key, size, request.dimensions)
            encoded: list[float] | str = (
                base64.b64encode(vector.tobytes()).decode()
                if request.encoding_format == "base64"
                else vector.tolist()
            )
            data.append(Embedding(index=index, embedding=encoded))
        tokens = sum(count for _, count in inputs)
        request_id = (
            raw_id.decode("latin-1")
            if raw_id is not None
            else request.request_id or secrets.token_hex(8)
        )
        return _encode(
            EmbeddingList(
                id=f"embd-{request_id}",
                created=int(time.time()),
                model=model,
                data=data,
                usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
            )
        )


async def _send_half(send: Send, body: bytes) -> None:
    """Promise the whole body, deliver half, then let the server close the socket."""
    headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise SimulatedConnectionDrop
