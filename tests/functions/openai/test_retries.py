"""The official SDK's own retries against the door: it retries 408, 409, 429 and every 5xx
unless the response carries ``x-should-retry: false``. An error a retry cannot fix says so
and is sent once; one a retry can fix is left to the SDK's rule. The SDK's attempts are
counted on its own HTTP client (its request hook), with its default ``max_retries``.

The failing upstream is ``cut-model`` (it fails every answer after a few tokens: a 502
once the exchange is stored), not ``fail-model``, whose 500s get it ejected when tests
share the gateway (then the answer is a 503 before anything is stored)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from functions.core.web.errors import Problem, retry_can_fix
from tests.functions.openai.conftest import Door, secret_of
from tests.support.timing import scaled

HELLO = [{"role": "user", "content": "Hello"}]
SDK_RETRIES = 2  # the SDK's default


@dataclass
class Counted:
    """An SDK client with its default retries, and the attempts it made, by path."""

    sdk: AsyncOpenAI
    attempts: list[str] = field(default_factory=list)

    def take(self) -> int:
        made = len(self.attempts)
        self.attempts.clear()
        return made


@pytest.fixture
async def counted(door: Door) -> AsyncIterator[Counted]:
    attempts: list[str] = []

    async def count(request: httpx2.Request) -> None:
        attempts.append(request.url.path)

    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]})
    sdk = AsyncOpenAI(
        base_url=door.base_url,
        api_key=secret_of(door.api.alice),
        max_retries=SDK_RETRIES,
        timeout=scaled(15.0),
        http_client=http,
    )
    try:
        yield Counted(sdk, attempts)
    finally:
        await sdk.close()


def should_retry(error: openai.APIStatusError) -> str | None:
    return error.response.headers.get("x-should-retry")


async def test_a_reused_idempotency_key_is_sent_once(door: Door, counted: Counted) -> None:
    key = {"Idempotency-Key": "retries-reused"}
    await counted.sdk.chat.completions.create(model="sim-model", messages=HELLO, extra_headers=key)
    assert counted.take() == 1
    with pytest.raises(openai.ConflictError) as caught:
        await counted.sdk.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "Other"}], extra_headers=key
        )
    assert caught.value.code == "idempotency_key_reused"
    assert should_retry(caught.value) == "false"
    assert counted.take() == 1  # not three: the SDK obeyed the header
    assert len(await door.conversations()) == 1


async def test_a_history_mismatch_is_sent_once(door: Door, counted: Counted) -> None:
    raw = await counted.sdk.chat.completions.with_raw_response.create(
        model="sim-model", messages=HELLO
    )
    header = {"X-Switchboard-Conversation": raw.headers["x-switchboard-conversation"]}
    counted.take()
    with pytest.raises(openai.ConflictError) as caught:
        await counted.sdk.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "Something else"}],
            extra_headers=header,
        )
    assert caught.value.code == "history_mismatch"
    assert should_retry(caught.value) == "false"
    assert counted.take() == 1


async def test_requests_a_retry_cannot_fix_say_so(counted: Counted) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await counted.sdk.chat.completions.create(model="sim-model", messages=HELLO, n=17)
    with pytest.raises(openai.NotFoundError) as unknown:
        await counted.sdk.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.APIStatusError) as too_large:
        await counted.sdk.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x" * (2 * 1024 * 1024)}]
        )
    assert too_large.value.status_code == 413
    for caught in (bad, unknown, too_large):
        assert should_retry(caught.value) == "false"
    assert counted.take() == 3


async def test_an_upstream_failure_is_left_to_the_sdk_to_retry(
    door: Door, counted: Counted
) -> None:
    first = await counted.sdk.chat.completions.create(model="sim-model", messages=HELLO)
    history = [
        *HELLO,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Again"},
    ]
    counted.take()
    with pytest.raises(openai.InternalServerError) as caught:
        await counted.sdk.chat.completions.create(model="cut-model", messages=history)
    assert (caught.value.status_code, caught.value.code) == (502, "llm_error")
    assert should_retry(caught.value) is None
    assert counted.take() == 1 + SDK_RETRIES
    # Every attempt is stored, threaded into the one conversation after the failures
    # before it: the SDK's retries leave no branch behind.
    conversations = await door.conversations()
    assert len(conversations) == 1
    messages = await door.messages(conversations[0]["id"])
    assert [(m["role"], m["status"]) for m in messages[2:]] == [
        ("user", "complete"),
        ("assistant", "failed"),
    ] * (1 + SDK_RETRIES)


async def test_a_failure_under_an_idempotency_key_is_retried_once_then_final(
    door: Door, counted: Counted
) -> None:
    """The SDK's retry of a 502 sent with an ``Idempotency-Key`` replays the stored failure:
    a 409 ``idempotent_request_failed`` that says not to retry, so two attempts, one store."""
    key = {"Idempotency-Key": "retries-failed"}
    with pytest.raises(openai.ConflictError) as caught:
        await counted.sdk.chat.completions.create(
            model="cut-model", messages=HELLO, extra_headers=key
        )
    assert caught.value.code == "idempotent_request_failed"
    assert should_retry(caught.value) == "false"
    assert counted.take() == 2
    conversations = await door.conversations()
    assert len(conversations) == 1
    assert len(await door.messages(conversations[0]["id"])) == 2


@pytest.mark.parametrize(
    ("status", "code", "fixable"),
    [
        (409, "conversation_busy", True),
        (409, "idempotent_request_in_progress", True),
        (409, "idempotency_key_reused", False),
        (409, "idempotent_request_failed", False),
        (409, "history_mismatch", False),
        (429, "rate_limited", True),
        (503, "shutting_down", True),
        (503, "llm_unavailable", True),
        (502, "llm_error", True),
        (504, "llm_timeout", True),
        (502, "llm_auth_failed", False),
        (400, "context_length_exceeded", False),
        (413, "payload_too_large", False),
    ],
)
def test_which_errors_a_retry_can_fix(status: int, code: str, fixable: bool) -> None:
    assert retry_can_fix(Problem(status, code, "")) is fixable
