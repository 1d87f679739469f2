"""The toy tokenizer (text.py) and the /tokenize and /detokenize endpoints."""

from __future__ import annotations

import httpx
import pytest

from functions.simulator.text import count_tokens, generate_reply, render_chat, tokenize
from tests.simulator.conftest import MAX_MODEL_LEN, MODEL, OTHER_MODEL


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("hello world", ["hello", " world"]),
        ("안녕하세요", ["안", "녕", "하", "세", "요"]),
        ("서울 🌊🚀!", ["서", "울", " 🌊", "🚀", "!"]),
        ("café naïve", ["café", " naïve"]),
        ("<|user|>hi<|end|>", ["<|user|>", "hi", "<|end|>"]),
        ("a  b\n", ["a", "  b", "\n"]),
        ("", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens
    assert "".join(tokens) == text
    assert count_tokens(text) == len(tokens)


@pytest.mark.parametrize("seed", range(20))
def test_replies_are_whole_tokens_and_retokenize_identically(seed: int) -> None:
    reply = generate_reply(seed, "안녕하세요 세계 🚀 hello there", 25)
    assert len(reply) == 25
    assert tuple(tokenize("".join(reply))) == reply
    assert generate_reply(seed, "안녕하세요 세계 🚀 hello there", 25) == reply
    # Shorter replies are prefixes: max_tokens truncates, it does not re-roll.
    assert generate_reply(seed, "안녕하세요 세계 🚀 hello there", 7) == reply[:7]


def test_render_chat_marks_roles() -> None:
    rendered = render_chat([("system", "be nice"), ("user", "hi")])
    assert rendered == "<|system|>be nice<|end|><|user|>hi<|end|><|assistant|>"


async def test_tokenize_prompt_form(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/tokenize", json={"prompt": "안녕 world 🚀", "return_token_strs": True}
    )
    body = response.json()
    assert list(body) == ["count", "max_model_len", "tokens", "token_strs"]
    assert body["max_model_len"] == MAX_MODEL_LEN
    assert body["token_strs"] == ["<|bos|>", "안", "녕", " world", " 🚀"]  # BOS by default
    assert body["count"] == len(body["tokens"]) == 5
    plain = (
        await client.post(
            "/tokenize", json={"prompt": "안녕 world 🚀", "add_special_tokens": False}
        )
    ).json()
    assert plain["count"] == 4
    assert plain["token_strs"] is None
    assert plain["tokens"] == body["tokens"][1:]


async def test_tokenize_messages_form(client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "hi there"}]
    body = (
        await client.post(
            "/tokenize",
            json={"model": OTHER_MODEL, "messages": messages, "return_token_strs": True},
        )
    ).json()
    assert body["token_strs"] == ["<|user|>", "hi", " there", "<|end|>", "<|assistant|>"]
    no_prompt = (
        await client.post("/tokenize", json={"messages": messages, "add_generation_prompt": False})
    ).json()
    assert no_prompt["count"] == 4


async def test_tokenize_errors(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["param"] == "model"
    assert (await client.post("/tokenize", json={"model": MODEL})).status_code == 400
    assert (await client.post("/tokenize", content=b"prompt=x")).status_code == 400


async def test_detokenize_round_trip(client: httpx.AsyncClient) -> None:
    text = "서울 café 🚀, again"
    ids = (
        await client.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
    ).json()["tokens"]
    response = await client.post("/detokenize", json={"model": MODEL, "tokens": ids})
    assert response.json() == {"prompt": text}
    out_of_range = await client.post("/detokenize", json={"tokens": [0, 10**9]})
    assert out_of_range.status_code == 400
    assert out_of_range.json()["error"]["param"] == "tokens"
    negative = await client.post("/detokenize", json={"tokens": [-1]})
    assert negative.status_code == 400
