"""The test helper itself: start, stop, restart on the same port, failures that explain."""

from __future__ import annotations

import httpx
import pytest

from tests.support.simulator import (
    SimulatorProcess,
    SimulatorStartError,
    async_running_simulator,
    running_simulator,
)


def test_stop_and_start_again_on_the_same_port() -> None:
    with running_simulator("--tokens", "3") as sim:
        port = sim.port
        assert sim.base_url == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"{sim.root_url}/health").status_code == 200
        sim.stop()
        sim.stop()  # safe twice
        assert not sim.running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{sim.root_url}/health")
        sim.start()
        assert sim.port == port
        assert httpx.get(f"{sim.base_url}/models").status_code == 200
        assert sim.stats()["total_requests"] == 2  # the readiness probe and /v1/models
        sim.kill()
        assert not sim.running
    assert not sim.running


def test_a_bad_flag_surfaces_the_error() -> None:
    sim = SimulatorProcess("--tokens", "0")
    with pytest.raises(SimulatorStartError, match="tokens"):
        sim.start()
    sim.close()


async def test_async_helper_and_stats() -> None:
    async with async_running_simulator() as sim, httpx.AsyncClient() as http:
        await http.post(
            f"{sim.base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        stats = await sim.stats_async()
        assert stats["paths"]["/v1/chat/completions"] == 1
        assert stats["last_chat_request"]["body"]["messages"][0]["content"] == "hi"
        sim.reset()
        assert sim.stats()["total_requests"] == 0
