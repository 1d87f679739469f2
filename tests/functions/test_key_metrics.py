"""Per-key usage metrics: a key named in SWITCHBOARD_METRICS_KEY_NAMES is labelled by its
name, every other key as ``other`` (never an id), by configuration and status; tokens too.
In-process gateway, both engines."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import InProcessGateway
from tests.support.timing import scaled


@pytest.fixture
def inprocess_overrides() -> dict[str, Any]:
    return {"metrics_key_names": ("alice",)}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the series ``name{labels}`` in an exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def test_usage_is_counted_per_listed_key_and_other(inprocess: InProcessGateway) -> None:
    alice, bob = await inprocess.caller("alice"), await inprocess.caller("bob")

    async def metrics() -> str:
        return (await inprocess.admin.get("/metrics")).text

    before = await metrics()
    body = {"model": INPROCESS_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for caller in (alice, alice, bob):
        answer = await caller.http.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text

    def grew(text: str, key: str, by: float) -> bool:
        labels = {"key": key, "config": "none", "status": "complete"}
        name = "switchboard_key_replies_total"
        return sample(text, name, **labels) - sample(before, name, **labels) >= by

    text = ""

    async def counted() -> bool:
        nonlocal text
        text = await metrics()
        return grew(text, "alice", 2) and grew(text, "other", 1)

    deadline = asyncio.get_running_loop().time() + scaled(10)
    while not await counted():  # each worker adds its counts within a second
        assert asyncio.get_running_loop().time() < deadline, text
        await asyncio.sleep(0.2)
    assert sample(text, "switchboard_key_tokens_total", key="alice", kind="completion") > 0
    assert 'key="bob"' not in text  # not listed: counted as other
    assert str(bob.key_id) not in text
    assert str(alice.key_id) not in text
