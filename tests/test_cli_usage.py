"""``switchboard usage`` and ``switchboard keys create/update`` with access options, as a
user runs them (a subprocess), on PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from functions.core.keys.schemas import ApiKeyCreate
from functions.core.keys.service import create_key
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from functions.core.usage.ledger import UnstoredCall, record_unstored
from tests.test_cli import database_url, migrated, run

__all__ = ["database_url", "migrated"]  # the module's fixtures, shared


def test_keys_create_and_update_with_access(migrated: str) -> None:
    created = run(
        migrated, "keys", "create", "--name", "team", "--config", "support", "--model", "m1",
        "--expires-at", "2099-01-31", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = msgspec.json.decode(created.stdout)
    assert (key["allowed_configs"], key["allowed_models"]) == (["support"], ["m1"])
    assert key["expires_at"].startswith("2099-01-31T00:00:00")
    updated = run(migrated, "keys", "update", key["id"], "--any-model", "--no-expiry")
    assert updated.returncode == 0, updated.stderr
    assert "configs: support" in updated.stdout
    assert "models" not in updated.stdout
    assert "expires" not in updated.stdout
    for args, problem in (
        ((key["id"],), "nothing to change"),
        ((key["id"], "--model", "x", "--any-model"), "not both"),
        ((key["id"], "--expires-at", "2099-01-01T00:00:00"), "time zone"),
        ((key["id"], "--expires-at", "soon"), "invalid --expires-at"),
        (("not-a-uuid", "--any-model"), "not a key id"),
    ):
        refused = run(migrated, "keys", "update", *args)
        assert refused.returncode == 2, (args, refused.stdout)
        assert problem in refused.stderr
    past = run(migrated, "keys", "update", key["id"], "--expires-at", "2001-01-01")
    assert past.returncode == 1
    assert "in the past" in past.stderr
    unknown = run(migrated, "keys", "update", str(uuid.uuid4()), "--any-model")
    assert unknown.returncode == 1


async def test_usage_prints_the_table_and_json(migrated: str) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    async with open_runtime(Settings(database_url=migrated), use_llm=False):
        owner = (await create_key(ApiKeyCreate(name="usage-cli"))).id
        for status, code, tokens in (("complete", None, 5), ("failed", "llm_error", 2)):
            await record_unstored(
                UnstoredCall(
                    owner=owner,
                    model="embedder",
                    status=status,
                    asked_at=now + timedelta(minutes=5),
                    finished_at=now + timedelta(minutes=5),
                    prompt_tokens=tokens,
                    latency_ms=12.0,
                    error_code=code,
                )
            )
    window = (
        "--from",
        f"{now:%Y-%m-%dT%H:%M:%SZ}",
        "--to",
        f"{now + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
    )
    table = run(migrated, "usage", *window, "--group-by", "key,model")
    assert table.returncode == 0, table.stderr
    [line] = [line for line in table.stdout.splitlines() if line.startswith("usage-cli")]
    assert line.split()[:5] == ["usage-cli", "embedder", "2", "1", "1"]
    assert "llm_error:1" in line
    answer = run(migrated, "usage", *window, "--group-by", "key", "--json")
    [mine] = [
        row for row in msgspec.json.decode(answer.stdout)["data"] if row["key_name"] == "usage-cli"
    ]
    assert (mine["requests"], mine["prompt_tokens"], mine["errors"]) == (2, 7, {"llm_error": 1})
    for args, field in (
        ((("--from", "noon"),), "--from"),
        ((("--group-by", "everything"),), "group_by"),
    ):
        refused = run(migrated, "usage", *args[0])
        assert refused.returncode == 2
        assert field in refused.stderr
    odd = run(migrated, "usage", "--from", "2026-12-01T00:30:00Z")
    assert odd.returncode == 1
    assert "whole hour" in odd.stderr
