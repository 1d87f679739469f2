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

from functions.simulator.asgi import ClientGone, Receive, Scope, Send, read_body, send_bytes
from functions.simulator.errors import (
    ApiError,
    bad_request,
    engine_dead,
    error_body,
    invalid_request,
)
from functions.simulator.generation import check_content_type
from functions.simulator.overrides import scan_headers
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
    """The embeddings endpoint of one app (a pooling model's)."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state

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
            check_content_type(headers.content_type)
            request = decode_request(body, _decode_embedding)
            model = resolve_model(request.model, options.models)
            inputs = embedding_inputs(request, state.vocabulary)
            for _, count in inputs:
                check_context(count, 0, options.max_model_len, "max_tokens")
            check_dimensions(request.dimensions, options)
            if not state.healthy:
                raise engine_dead()
        except ApiError as error:
            await self._send_error(send, error)
            return
        data: list[Embedding] = []
        for index, (key, _) in enumerate(inputs):
            vector = embedding_vector(model, key, options.embedding_dim, request.dimensions)
            encoded: list[float] | str = (
                base64.b64encode(vector.tobytes()).decode()
                if request.encoding_format == "base64"
                else vector.tolist()
            )
            data.append(Embedding(index=index, embedding=encoded))
        tokens = sum(count for _, count in inputs)
        metrics = state.metrics.by_model[model]
        metrics.prompt_tokens += tokens
        metrics.finished["stop"] += len(inputs)
        raw_id = headers.request_id
        request_id = (
            raw_id.decode("latin-1")
            if raw_id is not None
            else request.request_id or secrets.token_hex(8)
        )
        response = EmbeddingList(
            id=f"embd-{request_id}",
            created=int(time.time()),
            model=model,
            data=data,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        await send_bytes(send, 200, _encode(response))
