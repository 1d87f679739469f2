"""A conversation held over HTTP, replayed and saved by the runtime's replay service, then
read through the chat API like any other conversation (PostgreSQL, the gateway in-process)."""

from __future__ import annotations

import uuid
from typing import Any

from piccolo.engine.base import Engine

from functions.core.replay.service import ReplayService
from tests.support.inprocess import inprocess_gateway, inprocess_settings
from tests.support.simulator import SimulatorProcess


async def test_a_saved_rollout_reads_back_through_the_chat_api(
    pg: Engine[Any], pg_url: str, sim: SimulatorProcess
) -> None:
    settings = inprocess_settings(pg_url, [sim.base_url])
    async with inprocess_gateway(settings) as gateway:
        for name, prompt in (("prod", "Be brief."), ("candidate", "Be thorough.")):
            created = await gateway.admin.post(
                "/v1/configs", json={"name": name, "model": "sim-model", "system_prompt": prompt}
            )
            assert created.status_code == 201, created.text
        alice = await gateway.caller("alice")
        bob = await gateway.caller("bob")
        started = await alice.http.post(
            "/v1/conversations", json={"title": "Onboarding", "config": "prod"}
        )
        original = started.json()["id"]
        for text in ("Where do I start?", "And then?"):
            sent = await alice.http.post(
                f"/v1/conversations/{original}/messages", json={"content": text}
            )
            assert sent.status_code == 201, sent.text

        replayer = ReplayService.of(gateway.runtime)
        result = await replayer.replay(
            uuid.UUID(original), config="candidate", mode="rollout", save=True
        )

        saved = str(result.saved_conversation_id)
        about = await alice.http.get(f"/v1/conversations/{saved}")
        assert about.status_code == 200, about.text
        body = about.json()
        assert body["metadata"] == {
            "replay": {
                "of": original,
                "config": "candidate",
                "config_version": 1,
                "mode": "rollout",
                "source": "database",
            }
        }
        assert body["title"] == "Replay of Onboarding (candidate@1, rollout)"
        assert body["config"] == "candidate"
        listed = await alice.http.get(f"/v1/conversations/{saved}/messages")
        history = listed.json()["data"]
        assert [(m["role"], m["content"]) for m in history if m["role"] == "user"] == [
            ("user", "Where do I start?"),
            ("user", "And then?"),
        ]
        replies = [m for m in history if m["role"] == "assistant"]
        assert [m["content"] for m in replies] == [t.replayed.content for t in result.turns]
        assert all(m["config"]["name"] == "candidate" for m in replies)
        assert all(m["status"] == "complete" and m["usage"] for m in replies)
        # It is Alice's: another key does not see it.
        assert (await bob.http.get(f"/v1/conversations/{saved}")).status_code == 404
        # And it goes on like any conversation: the next send sees the replayed history.
        more = await alice.http.post(f"/v1/conversations/{saved}/messages", json={"content": "Ok"})
        assert more.status_code == 201
        assert more.json()["seq"] == 6
