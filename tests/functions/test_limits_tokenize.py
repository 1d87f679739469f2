"""SWITCHBOARD_LIMIT_PROMPT_TOKENS=tokenize: the door's whole prompt is counted by the
upstream's /tokenize, so the reservation is exact."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import InProcessGateway
from tests.support.simulator import SimulatorProcess

MESSAGES = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What colour is the sky on a clear day, usually?"},
]


@pytest.fixture
def inprocess_overrides() -> dict[str, Any]:
    return {"limit_prompt_tokens": "tokenize"}


async def test_the_reservation_is_the_upstreams_count_plus_max_tokens(
    inprocess: InProcessGateway, inprocess_upstream: SimulatorProcess
) -> None:
    root = inprocess_upstream.base_url.removesuffix("/v1")
    async with httpx.AsyncClient() as client:
        counted = await client.post(
            f"{root}/tokenize",
            json={"model": INPROCESS_MODEL, "messages": MESSAGES, "add_generation_prompt": True},
        )
    count = counted.json()["count"]
    alice = await inprocess.caller("alice")
    await inprocess.admin.put(f"/v1/keys/{alice.key_id}/limits", json={"tokens_per_minute": 10_000})
    answer = await alice.http.post(
        "/v1/chat/completions",
        json={"model": INPROCESS_MODEL, "messages": MESSAGES, "max_tokens": 100},
    )
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 10_000 - count - 100
    # What vLLM reported as the prompt is what was counted.
    assert answer.json()["usage"]["prompt_tokens"] == count
