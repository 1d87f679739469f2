"""The maintenance flow retires what a killed gateway left pending, and prunes.

A gateway streams a slow reply and is killed (``kill -9``) mid-send; nothing else runs,
so the reply stays ``pending``. Once the dead process's lease has lapsed, one maintenance
run retires it as ``interrupted`` and says so in its artifact; the conversation then
accepts a send.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.maintenance import MaintenanceReport, maintenance
from functions.core.chat.schemas import SendRequest
from functions.core.health import service as health
from functions.core.keys import service as keys
from functions.core.keys.schemas import UNRESTRICTED, ApiKeyCreate
from functions.core.messages.schemas import Turn
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from tests.core.health.support import probed
from tests.flows.conftest import run_flow, wait_for
from tests.support.gateway import GatewayProcess
from tests.support.pushgateway import PushgatewayProcess, pushed, value
from tests.support.simulator import SimulatorProcess

LEASE_TTL_S = 1.0


@pytest.fixture(scope="module")
def slow() -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess("--model", "slow-model", "--itl-ms", "100", "--tokens", "400")
    try:
        yield sim.start()
    finally:
        sim.close()


async def query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def stream_until_first_delta(
    api: httpx.AsyncClient, conversation: str, got: asyncio.Event
) -> None:
    """A streamed send read until the connection breaks (its server is killed meanwhile)."""
    try:
        async with api.stream(
            "POST",
            f"/v1/conversations/{conversation}/messages",
            json={"content": "tell me a long story", "stream": True},
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line == "event: delta":
                    got.set()
    except httpx.TransportError:
        pass


async def test_a_reply_left_pending_by_a_killed_gateway_is_retired(
    flows_db: str, flow_env: Callable[..., None], slow: SimulatorProcess
) -> None:
    flow_env(database_url=flows_db, llm_urls=slow.base_url, log_format="json")
    admin = await keys.create_key(ApiKeyCreate(name="admin", scopes=["admin", "chat"]))
    gateway = GatewayProcess(
        flows_db, [slow.base_url], env={"SWITCHBOARD_LEASE_TTL_S": str(LEASE_TTL_S)}
    )
    await asyncio.to_thread(gateway.start)
    try:
        headers = {"Authorization": f"Bearer {admin.secret}"}
        async with httpx.AsyncClient(base_url=gateway.root_url, headers=headers, timeout=30) as api:
            response = await api.post(
                "/v1/configs", json={"name": "slow", "model": "slow-model", "is_default": True}
            )
            assert response.status_code == 201, response.text
            conversation = (await api.post("/v1/conversations", json={})).json()["id"]
            got = asyncio.Event()
            streaming = asyncio.create_task(stream_until_first_delta(api, conversation, got))
            await asyncio.wait_for(got.wait(), 10)
            await asyncio.to_thread(gateway.kill)  # kill -9, mid-reply
            await asyncio.wait_for(streaming, 10)
    finally:
        await asyncio.to_thread(gateway.close)

    async def lease_lapsed() -> bool:
        rows = await query(flows_db, "SELECT expires_at FROM process_lease")
        return all(row["expires_at"] < datetime.now(UTC) for row in rows)

    await wait_for(lease_lapsed, within=5 * LEASE_TTL_S)
    pending = await query(
        flows_db,
        "SELECT id FROM message WHERE status = 'pending' AND conversation = $1",
        uuid.UUID(conversation),
    )
    assert len(pending) == 1  # nobody else is left to retire it

    ran = await run_flow(maintenance)
    report: MaintenanceReport = ran.result
    assert [(r.conversation_id, r.message_id) for r in report.retired] == [
        (uuid.UUID(conversation), pending[0]["id"])
    ]
    reply = await query(
        flows_db, "SELECT status, error_code FROM message WHERE id = $1", pending[0]["id"]
    )
    assert (reply[0]["status"], reply[0]["error_code"]) == ("failed", "interrupted")
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[ran.flow_run_id])
            )
        )
    assert [artifact.key for artifact in artifacts] == ["maintenance-report"]
    assert conversation in str(artifacts[0].data)
    print(f"\nmaintenance flow, in-process: {ran.seconds * 1000:.0f} ms")

    # The conversation takes a send again (through the same runtime a flow or script uses).
    settings = Settings(database_url=flows_db, llm_urls=(slow.base_url,), log_format="json")
    async with open_runtime(settings) as runtime:
        sent = await runtime.chat.send(
            SendRequest(
                access=UNRESTRICTED,
                owner=admin.id,
                conversation_id=uuid.UUID(conversation),
                turns=[Turn(role="user", content="again, briefly")],
                sampling={"max_tokens": 2},
            )
        )
    assert sent.status == "complete"


async def test_prunes_lapsed_leases_and_health_checks_past_retention(
    flows_db: str, flow_env: Callable[..., None], request: pytest.FixtureRequest
) -> None:
    pushgateway = PushgatewayProcess()
    request.addfinalizer(pushgateway.close)
    pushgateway.start()
    flow_env(
        database_url=flows_db,
        health_retention_days=2,
        log_format="json",
        metrics_pushgateway_url=pushgateway.root_url,
    )
    now = datetime.now(UTC)
    await health.record([probed("http://10.0.0.1:8000/v1")], checked_at=now - timedelta(days=3))
    await health.record([probed("http://10.0.0.1:8000/v1")], checked_at=now - timedelta(days=1))
    old = now - timedelta(hours=2)
    await query(
        flows_db,
        "INSERT INTO process_lease (id, host, pid, started_at, heartbeat_at, expires_at) "
        "VALUES ($1, 'gone', 1, $2, $2, $2)",
        uuid.uuid4(),
        old,
    )
    report: MaintenanceReport = (await run_flow(maintenance)).result
    assert report.health_checks_pruned == 1
    assert report.retired == []
    assert len(await health.history()) == 1
    assert await query(flows_db, "SELECT id FROM process_lease") == []
    assert report.health_retention_days == 2
    # What the run did reaches the Pushgateway under the deployment's name.
    samples = pushed(pushgateway)
    items = "switchboard_flow_last_run_items"
    assert value(samples, items, flow="maintenance", kind="health_checks_pruned") == 1
    assert value(samples, items, flow="maintenance", kind="retired") == 0
