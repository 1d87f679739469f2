"""How a relayed chunk loses the usage its client did not ask for."""

from __future__ import annotations

import json

from functions.core.llm.schemas import UpstreamEvent, Usage
from functions.openai.relay import UsageWanted, relayed, without_usage

USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"hi \\"usage\\":"},"finish_reason":null}],'
    b'"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2,'
    b'"prompt_tokens_details":{"cached_tokens":0}}}'
)


def test_usage_written_last_is_cut_off_in_place() -> None:
    stripped = without_usage(CHUNK)
    assert stripped == CHUNK[: CHUNK.rindex(b',"usage":')] + b"}"
    assert "usage" not in json.loads(stripped)
    assert json.loads(stripped)["choices"][0]["delta"]["content"] == 'hi "usage":'


def test_usage_elsewhere_is_removed_by_decoding() -> None:
    chunk = {"id": "x", "usage": {"prompt_tokens": 1}, "choices": [], "model": "m"}
    stripped = json.loads(without_usage(json.dumps(chunk).encode()))
    assert stripped == {"id": "x", "choices": [], "model": "m"}


def test_what_each_client_gets() -> None:
    content = UpstreamEvent(raw=CHUNK, text="hi", usage=USAGE)
    final = UpstreamEvent(raw=b'{"choices":[],"usage":{}}', usage=USAGE, usage_only=True)
    plain = UpstreamEvent(raw=b'{"choices":[]}', text="")
    nothing = UsageWanted(include=False, continuous=False)
    final_only = UsageWanted(include=True, continuous=False)
    every = UsageWanted(include=True, continuous=True)
    assert relayed(final, nothing) is None
    assert relayed(final, final_only) == b"data: " + final.raw + b"\n\n"
    assert relayed(content, every) == b"data: " + CHUNK + b"\n\n"
    for wanted in (nothing, final_only):
        data = relayed(content, wanted)
        assert data is not None
        assert b'"usage":{' not in data
    assert relayed(plain, nothing) == b'data: {"choices":[]}\n\n'


def test_a_nested_usage_key_after_the_chunks_own_is_not_cut_at() -> None:
    # The last ``,"usage":`` is a nested key, not the chunk's own: decoded and written again.
    chunk = b'{"usage":{"prompt_tokens":1},"x":{"y":1,"usage":{"z":2}},"choices":[]}'
    assert json.loads(without_usage(chunk)) == {"x": {"y": 1, "usage": {"z": 2}}, "choices": []}
    scalar = b'{"usage":{"prompt_tokens":1},"x":{"y":1,"usage":2}}'
    assert json.loads(without_usage(scalar)) == {"x": {"y": 1, "usage": 2}}
