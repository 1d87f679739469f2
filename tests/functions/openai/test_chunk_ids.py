"""A relayed chunk is named after its stored reply: vLLM's id swapped for ``chatcmpl-<hex>``
in place when it leads the chunk, by decoding otherwise, and nothing else touched."""

from __future__ import annotations

import msgspec

from functions.openai.relay import with_id

NAME = b"chatcmpl-" + b"a" * 32


def test_the_leading_id_is_swapped_in_place() -> None:
    raw = (
        b'{"id":"chatcmpl-vllm-1","object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{"tool_calls":[{"id":"chatcmpl-tool-1","index":0}]}}]}'
    )
    renamed = with_id(raw, NAME)
    chunk = msgspec.json.decode(renamed)
    assert chunk["id"] == NAME.decode()
    assert chunk["choices"][0]["delta"]["tool_calls"][0]["id"] == "chatcmpl-tool-1"
    assert renamed == raw.replace(b"chatcmpl-vllm-1", NAME, 1)


def test_an_id_elsewhere_or_escaped_is_rewritten_by_decoding() -> None:
    for raw in (
        b'{"object":"chat.completion.chunk","id":"x","choices":[]}',
        b'{"id":"a\\"b","choices":[]}',
        b'{ "id": "spaced", "choices": [] }',
    ):
        chunk = msgspec.json.decode(with_id(raw, NAME))
        assert chunk["id"] == NAME.decode()
        assert chunk["choices"] == []


def test_a_chunk_without_an_id_is_left_alone() -> None:
    raw = b'{"error":{"message":"boom"}}'
    assert with_id(raw, NAME) == raw
