"""``POST /v1/completions`` (the legacy API), as vLLM's ``completion/serving.py`` answers it:
prompts as a string, strings, token ids or lists of them; ``echo``; ``logprobs`` as an int;
``suffix`` refused; streamed without a role chunk; usage exact."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.simulator.conftest import MAX_MODEL_LEN, MODEL, TOKENS, parse_sse

PROMPT = "Once upon a time in Seoul, 안녕하세요 🌊"
CHOICE_KEYS = [
    "index",
    "text",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "prompt_logprobs",
    "prompt_token_ids",
]
STREAM_CHOICE_KEYS = [
    "index",
    "text",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "prompt_token_ids",
    "token_ids",
]


async def complete(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/completions", json={"model": MODEL, **body})


async def prompt_tokens(client: httpx.AsyncClient, text: str) -> list[int]:
    """The ids ``/tokenize`` gives a prompt (BOS first, as a completion counts it)."""
    response = await client.post("/tokenize", json={"model": MODEL, "prompt": text})
    tokens: list[int] = response.json()["tokens"]
    return tokens


def streamed(events: list[Any]) -> dict[int, list[dict[str, Any]]]:
    """Each choice's chunks, by ``index``."""
    assert events[-1] == "[DONE]"
    by_index: dict[int, list[dict[str, Any]]] = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            by_index.setdefault(choice["index"], []).append(choice)
    return by_index


async def test_the_non_streamed_shape_and_exact_usage(client: httpx.AsyncClient) -> None:
    response = await complete(client, prompt=PROMPT)
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "service_tier",
        "system_fingerprint",
        "usage",
        "kv_transfer_params",
    ]
    assert body["id"].startswith("cmpl-")
    assert (body["object"], body["model"]) == ("text_completion", MODEL)
    [choice] = body["choices"]
    assert list(choice) == CHOICE_KEYS
    assert choice["text"]
    assert choice["logprobs"] is None
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    prompt = len(await prompt_tokens(client, PROMPT))
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "total_tokens": prompt + TOKENS,
        "completion_tokens": TOKENS,
        "prompt_tokens_details": None,
    }


async def test_max_tokens_defaults_to_16_as_in_vllm(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions", json={"prompt": PROMPT}, headers={"X-Sim-Tokens": "40"}
    )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 16
    unlimited = await client.post(
        "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": None},
        headers={"X-Sim-Tokens": "40"},
    )
    assert unlimited.json()["usage"]["completion_tokens"] == 40


async def test_every_prompt_form_is_one_engine_request_per_prompt(
    client: httpx.AsyncClient,
) -> None:
    other = "A second prompt"
    ids, other_ids = await prompt_tokens(client, PROMPT), await prompt_tokens(client, other)
    single = (await complete(client, prompt=PROMPT, seed=3)).json()
    as_ids = (await complete(client, prompt=ids, seed=3)).json()
    # The ids spell the same prompt, so the same reply and the same count.
    assert as_ids["choices"][0]["text"] == single["choices"][0]["text"]
    assert as_ids["usage"] == single["usage"]

    for prompt in ([PROMPT, other], [ids, other_ids]):
        body = (await complete(client, prompt=prompt, seed=3, n=2)).json()
        assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
        assert body["choices"][0]["text"] == single["choices"][0]["text"]
        # Each prompt counted once however many choices it has; every choice's tokens.
        assert body["usage"]["prompt_tokens"] == len(ids) + len(other_ids)
        assert body["usage"]["completion_tokens"] == 4 * TOKENS


@pytest.mark.parametrize(
    ("prompt", "message", "param"),
    [
        ("", "Either prompt or prompt_embeds must be provided and non-empty.", None),
        ([], "Either prompt or prompt_embeds must be provided and non-empty.", None),
        (["text", 5], "prompt must be a string, a list of strings", "prompt"),
        ([[1, 2], "text"], "prompt must be a string, a list of strings", "prompt"),
        ([1, -2], "prompt must be a string, a list of strings", "prompt"),
        ([999999], "Token id 999999 is out of vocabulary", "prompt"),
    ],
)
async def test_bad_prompts_are_400(
    client: httpx.AsyncClient, prompt: Any, message: str, param: str | None
) -> None:
    response = await complete(client, prompt=prompt)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith(message)
    assert (error["param"], error["code"]) == (param, 400)


async def test_suffix_is_refused_as_vllm_refuses_it(client: httpx.AsyncClient) -> None:
    response = await complete(client, prompt="def f(", suffix="    return x")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "suffix is not currently supported",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }


async def test_echo_repeats_the_prompt_before_the_completion(client: httpx.AsyncClient) -> None:
    plain = (await complete(client, prompt=PROMPT, seed=1)).json()
    echoed = (await complete(client, prompt=PROMPT, seed=1, echo=True)).json()
    assert echoed["choices"][0]["text"] == PROMPT + plain["choices"][0]["text"]
    assert echoed["usage"] == plain["usage"]


async def test_echo_with_max_tokens_0_returns_the_prompt_and_counts_one_token(
    client: httpx.AsyncClient,
) -> None:
    # vLLM generates one token it does not show, and its usage counts it.
    body = (await complete(client, prompt=PROMPT, echo=True, max_tokens=0)).json()
    [choice] = body["choices"]
    assert (choice["text"], choice["finish_reason"]) == (PROMPT, "length")
    assert body["usage"]["completion_tokens"] == 1
    refused = await complete(client, prompt=PROMPT, max_tokens=0)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "max_tokens"


async def test_logprobs_as_an_int(client: httpx.AsyncClient) -> None:
    body = (await complete(client, prompt=PROMPT, logprobs=3, max_tokens=5)).json()
    [choice] = body["choices"]
    logprobs = choice["logprobs"]
    assert list(logprobs) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["tokens"]) == body["usage"]["completion_tokens"] == 5
    offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(5)]
    assert logprobs["text_offset"] == offsets
    for token, value, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert -3 < value <= 0
        assert len(top) == 3
        assert top[token] == value == max(top.values())
    # logprobs=0 still gives the sampled token's own entry.
    zero = (await complete(client, prompt=PROMPT, logprobs=0, max_tokens=2)).json()
    assert [len(top) for top in zero["choices"][0]["logprobs"]["top_logprobs"]] == [1, 1]


async def test_echo_with_logprobs_scores_the_prompt_but_its_first_token(
    client: httpx.AsyncClient,
) -> None:
    body = (await complete(client, prompt=PROMPT, echo=True, logprobs=1, max_tokens=2)).json()
    logprobs = body["choices"][0]["logprobs"]
    ids = await prompt_tokens(client, PROMPT)
    assert len(logprobs["tokens"]) == len(ids) + 2
    assert logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][0] is None
    assert all(value is not None for value in logprobs["token_logprobs"][1:])


@pytest.mark.parametrize(
    ("logprobs", "message"),
    [
        (21, "Requested sample logprobs of 21, which is greater than max allowed: 20"),
        (-1, "`logprobs` must be a positive value."),
    ],
)
async def test_bad_logprobs_are_400(client: httpx.AsyncClient, logprobs: int, message: str) -> None:
    response = await complete(client, prompt=PROMPT, logprobs=logprobs)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith(message)
    assert error["param"] == "logprobs"


async def test_context_and_stream_options_are_checked(client: httpx.AsyncClient) -> None:
    too_long = await complete(client, prompt=PROMPT, max_tokens=MAX_MODEL_LEN)
    assert too_long.status_code == 400
    assert "maximum context length is 512 tokens" in too_long.json()["error"]["message"]
    options = await complete(client, prompt=PROMPT, stream_options={"include_usage": True})
    assert options.status_code == 400
    assert options.json()["error"]["param"] == "stream_options"
    unknown = await complete(client, prompt=PROMPT, model="nope")
    assert unknown.status_code == 404


async def test_a_stream_has_no_role_chunk_and_matches_the_whole_reply(
    client: httpx.AsyncClient,
) -> None:
    whole = (await complete(client, prompt=[PROMPT, "Two"], n=2, seed=5)).json()
    response = await complete(
        client,
        prompt=[PROMPT, "Two"],
        n=2,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = parse_sse(response.content)
    for event in events[:-2]:
        assert list(event) == ["id", "object", "created", "model", "choices"]
        assert event["object"] == "text_completion"
        assert event["id"].startswith("cmpl-")
        [choice] = event["choices"]  # one choice per chunk
        assert list(choice) == STREAM_CHOICE_KEYS
    # Interleaved: the first token of every choice before any choice's second.
    assert [e["choices"][0]["index"] for e in events[:4]] == [0, 1, 2, 3]
    chunks = streamed([*events[:-2], "[DONE]"])
    for choice in whole["choices"]:
        mine = chunks[choice["index"]]
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert [c["finish_reason"] for c in mine][-1] == choice["finish_reason"]
        assert all(c["finish_reason"] is None for c in mine[:-1])
    usage_event = events[-2]
    assert list(usage_event) == ["id", "object", "created", "model", "choices", "usage"]
    assert usage_event["choices"] == []
    assert usage_event["usage"] == {
        key: value for key, value in whole["usage"].items() if key != "prompt_tokens_details"
    }


async def test_continuous_usage_counts_per_prompt_and_choice(client: httpx.AsyncClient) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    prompts = [PROMPT, "Two"]
    response = await complete(
        client, prompt=prompts, max_tokens=3, stream=True, stream_options=options
    )
    events = parse_sse(response.content)
    counts = [len(await prompt_tokens(client, text)) for text in prompts]
    seen = {0: 0, 1: 0}
    for event in events[:-2]:
        index = event["choices"][0]["index"]
        seen[index] += 1
        usage = event["usage"]
        assert usage["prompt_tokens"] == counts[index]
        assert usage["completion_tokens"] == seen[index]
        assert usage["total_tokens"] == counts[index] + seen[index]
    assert events[-2]["usage"]["completion_tokens"] == 6


async def test_streamed_echo_and_logprobs_match_the_whole_reply(client: httpx.AsyncClient) -> None:
    body = {"prompt": PROMPT, "echo": True, "logprobs": 2, "max_tokens": 4, "seed": 9}
    whole = (await complete(client, **body)).json()["choices"][0]
    chunks = streamed(parse_sse((await complete(client, **body, stream=True)).content))[0]
    assert chunks[0]["text"].startswith(PROMPT)
    assert "".join(c["text"] for c in chunks) == whole["text"]
    for key in ("tokens", "token_logprobs", "top_logprobs"):
        joined = [value for c in chunks for value in c["logprobs"][key]]
        assert joined == whole["logprobs"][key]


async def test_a_fault_cuts_a_completion_stream_like_a_chat_one(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions",
        json={"prompt": PROMPT, "stream": True},
        headers={"X-Sim-Fault": "cut:2"},
    )
    events = parse_sse(response.content)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == 500
    assert len(events) == 4  # two tokens, the error, [DONE]
