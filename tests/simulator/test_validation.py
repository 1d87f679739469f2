"""Contract §2 and §4: 400 (never 422) validation, context length, 404 model, error shapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.simulator.conftest import MAX_MODEL_LEN, MODEL, chat_body, parse_sse
from tests.support.simulator import SimulatorProcess, running_simulator

URL = "/v1/chat/completions"


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert error["code"] == status
    assert isinstance(error["message"], str)
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


async def test_unknown_model_is_404_not_found(client: httpx.AsyncClient) -> None:
    error = assert_error(await client.post(URL, json=chat_body(model="gpt-9")), 404, "model")
    assert error == {
        "message": "The model `gpt-9` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"messages": []}', {"Content-Type": "text/plain"}),
        (b'{"messages": []}', {"Content-Type": "application/x-www-form-urlencoded"}),
        (b'{"messages": []}', {}),
    ],
)
async def test_non_json_content_type_is_400(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str]
) -> None:
    response = await client.post(URL, content=content, headers=headers)
    error = assert_error(response, 400)
    assert error["type"] == "Bad Request"
    assert "application/json" in error["message"]


async def test_json_content_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL,
        content=b'{"messages":[{"role":"user","content":"hi"}]}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[]", None),
        (b'{"model": "sim-model"}', "messages"),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": [{"content": "no role"}]}', "messages"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages"),
        (b'{"messages": [], "temperature": "hot"}', "temperature"),
        (b'{"messages": [], "stream": {"yes": 1}}', "stream"),
    ],
)
async def test_malformed_body_is_400_bad_request(
    client: httpx.AsyncClient, body: bytes, param: str | None
) -> None:
    response = await client.post(URL, content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, param)
    assert error["type"] == "Bad Request"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 0}, "n"),
    ],
)
async def test_bad_sampling_values_are_400(
    client: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    error = assert_error(await client.post(URL, json={**chat_body(), **extra}), 400, param)
    assert error["type"] == "BadRequestError"


async def test_boundary_sampling_values_are_fine(client: httpx.AsyncClient) -> None:
    body = chat_body(temperature=0, top_p=1, max_tokens=1, n=1, stop=None, seed=None)
    assert (await client.post(URL, json=body)).status_code == 200


@pytest.mark.parametrize("options", [{"include_usage": True}, {"include_usage": None}])
async def test_stream_options_without_stream_is_400(
    client: httpx.AsyncClient, options: dict[str, Any]
) -> None:
    for extra in ({}, {"stream": False}):
        body = {**chat_body(stream_options=options), **extra}
        assert_error(await client.post(URL, json=body), 400, "stream_options")


async def test_empty_stream_options_pass_without_stream(client: httpx.AsyncClient) -> None:
    # vLLM's validator tests the raw value (`if data.get("stream_options") and not
    # data.get("stream")`): an empty object is falsy, so it passes.
    for path, body in ((URL, chat_body()), ("/v1/completions", {"prompt": "hi"})):
        response = await client.post(path, json={**body, "stream_options": {}})
        assert response.status_code == 200


async def test_prompt_plus_max_tokens_over_context_is_400(client: httpx.AsyncClient) -> None:
    prompt_tokens = (
        await client.post("/tokenize", json={"messages": chat_body()["messages"]})
    ).json()["count"]
    requested = MAX_MODEL_LEN - prompt_tokens + 1
    error = assert_error(
        await client.post(URL, json=chat_body(max_tokens=requested)), 400, "input_tokens"
    )
    assert error["type"] == "BadRequestError"
    assert error["message"].startswith(
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
        f"{requested} output tokens and your prompt contains {prompt_tokens} input tokens, for a "
        f"total of {requested + prompt_tokens} tokens."
    )
    assert error["message"].endswith(f"(parameter=input_tokens, value={prompt_tokens})")
    # Exactly filling the context is allowed.
    fits = await client.post(URL, json=chat_body(max_tokens=requested - 1))
    assert fits.status_code == 200


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_over_context_alone_is_400(client: httpx.AsyncClient, field: str) -> None:
    body = chat_body()
    body[field] = MAX_MODEL_LEN + 1
    error = assert_error(await client.post(URL, json=body), 400, field)
    assert error["message"] == (
        f"{field}={MAX_MODEL_LEN + 1} cannot be greater than max_model_len=max_total_tokens="
        f"{MAX_MODEL_LEN}. Please request fewer output tokens."
    )


async def test_without_max_tokens_the_reply_is_clamped(client: httpx.AsyncClient) -> None:
    # A prompt that leaves 3 tokens of context: the 12-token reply is cut to 3, not rejected.
    words = " ".join(["word"] * (MAX_MODEL_LEN - 3 - 3))  # the template adds 3 special tokens
    body = chat_body(words)
    counted = (await client.post("/tokenize", json={"messages": body["messages"]})).json()
    assert counted["count"] == MAX_MODEL_LEN - 3
    response = (await client.post(URL, json=body)).json()
    assert response["usage"]["completion_tokens"] == 3
    assert response["choices"][0]["finish_reason"] == "length"


async def test_prompt_filling_the_context_is_400(client: httpx.AsyncClient) -> None:
    body = chat_body(" ".join(["word"] * MAX_MODEL_LEN))
    error = assert_error(await client.post(URL, json=body), 400, "input_tokens")
    assert "maximum context length" in error["message"]


async def test_errors_before_streaming_are_json_not_sse(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat_body(model="nope", stream=True))
    assert_error(response, 404, "model")
    response = await client.post(URL, json=chat_body(stream=True, temperature=-1))
    assert_error(response, 400, "temperature")


@pytest.fixture(scope="module")
def legacy_sim() -> Iterator[SimulatorProcess]:
    with running_simulator("--legacy-errors") as process:
        yield process


async def test_legacy_errors_are_flat(legacy_sim: SimulatorProcess) -> None:
    async with httpx.AsyncClient(base_url=legacy_sim.root_url) as http:
        response = await http.post(URL, json=chat_body(model="gpt-9"))
        assert response.status_code == 404
        assert response.json() == {
            "object": "error",
            "message": "The model `gpt-9` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
        bad = await http.post(URL, json=chat_body(temperature=-1))
        assert bad.status_code == 400
        assert list(bad.json()) == ["object", "message", "type", "param", "code"]
        # Mid-stream errors keep the {"error": ...} wrapper and were always a 400 then.
        cut = await http.post(URL, json=chat_body(stream=True), headers={"X-Sim-Fault": "cut:1"})
        events = parse_sse(cut.content)
        assert events[-1] == "[DONE]"
        inner = events[-2]["error"]
        assert inner["object"] == "error"
        assert (inner["type"], inner["code"]) == ("BadRequestError", 400)
        # The non-OpenAI bodies do not change.
        assert (await http.get("/nope")).json() == {"detail": "Not Found"}
        assert (await http.post(URL, json=chat_body(model=MODEL))).status_code == 200
