"""Limits in one process (memory): per key and per configuration, reserve and refund,
budgets under concurrency, and the 429s' shapes and headers on both doors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from functions.core.chat.hooks import Admission
from functions.core.chat.targets import Target
from functions.core.limits.headers import duration
from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import Caller, InProcessGateway


async def limited(gateway: InProcessGateway, name: str, **limits: Any) -> Caller:
    """A new chat key with ``limits`` set by the admin through the API."""
    caller = await gateway.caller(name)
    response = await gateway.admin.put(f"/v1/keys/{caller.key_id}/limits", json=limits)
    assert response.status_code == 200, response.text
    assert response.json()["limits"] == {
        field: limits.get(field)
        for field in (
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent",
            "tokens_per_day",
            "tokens_per_month",
        )
    }
    return caller


def door(caller: Caller, *, max_tokens: int | None = None, stream: bool = False) -> Any:
    body: dict[str, Any] = {
        "model": INPROCESS_MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": stream,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return caller.http.post("/v1/chat/completions", json=body)


def test_durations_read_as_openai_writes_them() -> None:
    assert [duration(ms) for ms in (0, 20, 999.6, 1000, 1500, 59_000, 60_000, 360_000)] == [
        "0s",
        "20ms",
        "1s",
        "1s",
        "1.5s",
        "59s",
        "1m0s",
        "6m0s",
    ]


async def test_requests_per_minute_refused_with_retry_headers(inprocess: InProcessGateway) -> None:
    alice = await limited(inprocess, "alice", requests_per_minute=2)
    first = await door(alice)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "30s"
    assert "x-ratelimit-limit-tokens" not in first.headers
    streamed = await door(alice, stream=True)
    assert streamed.status_code == 200
    assert streamed.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await door(alice)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 120
    assert 0 < int(refused.headers["retry-after-ms"]) <= 30_000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in refused.headers
    # Nothing was stored for the refused send: two conversations, not three.
    listed = await alice.http.get("/v1/conversations")
    assert len(listed.json()["data"]) == 2


async def test_a_large_max_tokens_that_stops_early_leaves_the_rest(
    inprocess: InProcessGateway,
) -> None:
    alice = await limited(inprocess, "alice", tokens_per_minute=3000)
    first = await door(alice, max_tokens=2500)
    assert first.status_code == 200, first.text
    # Reserved about 2500 and then some; the reply used a few dozen: the rest came back.
    used = first.json()["usage"]["total_tokens"]
    second = await door(alice, max_tokens=2500)
    assert second.status_code == 200, second.text
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    # After the second reservation (before its refund): 3000 - used - its reservation,
    # plus what the bucket refilled meanwhile (50 a second); without the first's refund
    # there would not have been room for the second at all.
    assert 3000 - used - 2600 <= remaining <= 3000 - 2500
    too_large = await door(alice, max_tokens=5000)
    assert too_large.status_code == 429
    assert too_large.json()["error"]["code"] == "rate_limit_exceeded"
    assert too_large.headers["x-should-retry"] == "false"


async def test_a_day_budget_refuses_with_insufficient_quota_in_each_shape(
    inprocess: InProcessGateway,
) -> None:
    alice = await limited(inprocess, "alice", tokens_per_day=200)
    refused = await door(alice, max_tokens=500)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert refused.headers["x-should-retry"] == "false"
    assert "retry-after" not in refused.headers
    created = await inprocess.admin.post(
        "/v1/configs", json={"name": "budgeted", "model": INPROCESS_MODEL}
    )
    assert created.status_code == 201, created.text
    conversation = (await alice.http.post("/v1/conversations", json={"config": "budgeted"})).json()
    chat = await alice.http.post(
        f"/v1/conversations/{conversation['id']}/messages",
        json={"content": "hi", "max_tokens": 500},
    )
    assert chat.status_code == 429
    assert chat.json()["error"]["code"] == "insufficient_quota"
    assert chat.json()["error"]["details"]["limit"] == "tokens_per_day"
    assert chat.headers["x-should-retry"] == "false"
    listed = await alice.http.get(f"/v1/conversations/{conversation['id']}/messages")
    assert listed.json()["data"] == []


async def test_fifty_concurrent_sends_never_overrun_a_budget(inprocess: InProcessGateway) -> None:
    alice = await limited(inprocess, "alice", tokens_per_day=1000)
    answers = await asyncio.gather(*(door(alice, max_tokens=100) for _ in range(50)))
    passed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(passed) + len(refused) == 50
    assert passed
    assert refused
    assert all(a.json()["error"]["code"] == "insufficient_quota" for a in refused)
    spent = sum(a.json()["usage"]["total_tokens"] for a in passed)
    assert spent <= 1000


def sdk(gateway: InProcessGateway, caller_http: Any, statuses: list[int]) -> Any:
    """The official OpenAI client, unmodified, over the in-process app; ``statuses``
    collects the status of every attempt it makes."""
    import httpx
    import openai

    async def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app),  # type: ignore[arg-type]
        base_url="http://gateway/v1",
        event_hooks={"response": [seen]},
    )
    secret = caller_http.headers["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(
        api_key=secret, base_url="http://gateway/v1", http_client=http, max_retries=3
    )


async def test_the_openai_sdk_retries_a_rate_limit_and_stops_on_a_spent_budget(
    inprocess: InProcessGateway,
) -> None:
    import openai

    alice = await limited(inprocess, "alice", max_concurrent=1)
    limiter = inprocess.runtime.limiter
    # Another send of alice's holds her only slot, for half a second.
    holding = Admission(
        owner=alice.key_id,
        conversation_id=None,
        target=Target(),
        turns=1,
        chars=10,
        max_tokens=None,
        request_id=None,
    )
    await limiter.admit(holding)

    async def release_soon() -> None:
        await asyncio.sleep(0.5)
        await limiter.reconcile(holding, None)

    releasing = asyncio.create_task(release_soon())
    statuses: list[int] = []
    client = sdk(inprocess, alice.http, statuses)
    answer = await client.chat.completions.create(
        model=INPROCESS_MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    await releasing
    assert answer.choices[0].message.content
    # Refused first (the bucket was empty), then answered after Retry-After.
    assert statuses[0] == 429
    assert statuses[-1] == 200
    bob = await limited(inprocess, "bob", tokens_per_day=100)
    statuses.clear()
    client = sdk(inprocess, bob.http, statuses)
    with pytest.raises(openai.RateLimitError) as raised:
        await client.chat.completions.create(
            model=INPROCESS_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=500
        )
    assert raised.value.code == "insufficient_quota"
    assert statuses == [429]  # x-should-retry: false: no retry


async def test_a_configuration_cap_holds_under_parallel_load(inprocess: InProcessGateway) -> None:
    created = await inprocess.admin.post(
        "/v1/configs", json={"name": "capped", "model": INPROCESS_MODEL, "max_concurrent": 1}
    )
    assert created.status_code == 201, created.text
    assert created.json()["max_concurrent"] == 1
    alice = await inprocess.caller("alice")
    answers = await asyncio.gather(
        *(
            alice.http.post(
                "/v1/chat/completions",
                json={"model": "capped", "messages": [{"role": "user", "content": "hi"}]},
            )
            for _ in range(12)
        )
    )
    passed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert passed
    assert len(passed) + len(refused) == 12
    for answer in refused:
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        assert answer.headers["retry-after"] == "1"


async def test_a_limit_changed_by_an_admin_applies_at_once_here(
    inprocess: InProcessGateway,
) -> None:
    alice = await inprocess.caller("alice")
    assert (await door(alice)).status_code == 200  # no limits: remembered as none
    response = await inprocess.admin.put(
        f"/v1/keys/{alice.key_id}/limits", json={"requests_per_minute": 1}
    )
    assert response.status_code == 200
    assert (await door(alice)).status_code == 200
    assert (await door(alice)).status_code == 429


async def test_the_chat_function_streams_with_the_same_headers(inprocess: InProcessGateway) -> None:
    created = await inprocess.admin.post(
        "/v1/configs", json={"name": "headed", "model": INPROCESS_MODEL}
    )
    assert created.status_code == 201, created.text
    alice = await limited(inprocess, "alice", requests_per_minute=5, tokens_per_minute=50_000)
    conversation = (await alice.http.post("/v1/conversations", json={"config": "headed"})).json()
    streamed = await alice.http.post(
        f"/v1/conversations/{conversation['id']}/messages",
        json={"content": "hi", "stream": True, "max_tokens": 50},
    )
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["x-ratelimit-limit-requests"] == "5"
    assert streamed.headers["x-ratelimit-remaining-requests"] == "4"
    assert streamed.headers["x-ratelimit-limit-tokens"] == "50000"
    assert int(streamed.headers["x-ratelimit-remaining-tokens"]) < 50_000 - 50
    assert streamed.headers["x-ratelimit-reset-tokens"].endswith(("ms", "s"))


async def test_a_keys_concurrency_cap_holds_under_parallel_load(
    inprocess: InProcessGateway,
) -> None:
    alice = await limited(inprocess, "alice", max_concurrent=1)
    answers = await asyncio.gather(*(door(alice) for _ in range(12)))
    passed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert passed
    assert len(passed) + len(refused) == 12
    for answer in refused:
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        assert answer.json()["error"]["message"].startswith("this API key already has 1 request")
    # Every slot was given back: a send after the burst passes.
    assert (await door(alice)).status_code == 200
