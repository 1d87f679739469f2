"""The ``switchboard`` command, run as a user would: a subprocess with its own environment."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.support import process
from tests.support.databases import create_postgres_database, drop_postgres_database

SWITCHBOARD = [sys.executable, "-m", "functions.cli"]
MIGRATIONS = len(
    list((Path(__file__).parents[1] / "functions/core/db/piccolo_migrations").glob("core_*.py"))
)


def run(
    url: str, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update({"SWITCHBOARD_DATABASE_URL": url, "SWITCHBOARD_LOG_FORMAT": "json"})
    env.update(extra_env or {})
    return process.run([*SWITCHBOARD, *args], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "postgres":
        url = await create_postgres_database("switchboard_cli")
        yield url
        await drop_postgres_database(url)
    else:
        yield f"sqlite:///{tmp_path_factory.mktemp('cli') / 'cli.sqlite'}"


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    result = run(database_url, "db", "migrate")
    assert result.returncode == 0, result.stderr
    assert f"applied {MIGRATIONS} migration(s)" in result.stdout
    return database_url


def dump(url: str) -> str:
    """Everything the database holds, as the operator's own tools would dump it."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return "\n".join(connection.iterdump())
        finally:
            connection.close()
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed to check what PostgreSQL stores"
    return process.run(
        [pg_dump, "--data-only", url], capture_output=True, text=True, check=True
    ).stdout


def test_help_lists_every_command() -> None:
    result = process.run([*SWITCHBOARD, "--help"], capture_output=True, text=True, check=True)
    for command in ("db", "keys", "configs", "sim-vllm"):
        assert command in result.stdout
    keys_help = process.run(
        [*SWITCHBOARD, "keys", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("create", "list", "revoke"):
        assert command in keys_help


def test_migrate_is_idempotent(migrated: str) -> None:
    result = run(migrated, "db", "migrate")
    assert result.returncode == 0
    assert f"up to date ({MIGRATIONS} migration(s) applied)" in result.stdout
    status = run(migrated, "db", "status")
    assert status.stdout.count("applied") == MIGRATIONS


def test_create_prints_the_secret_once_and_stores_only_its_hash(migrated: str) -> None:
    result = run(migrated, "keys", "create", "--name", "demo", "--admin")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    secret = fields["secret"].strip()
    assert secret.startswith("sb-")
    assert fields["scopes"].strip() == "admin,chat"
    assert "cannot be shown again" in result.stderr

    dumped = dump(migrated)
    assert "demo" in dumped  # the dump really has the key's row...
    assert secret not in dumped  # ...but never its secret
    assert secret[12:] not in dumped

    listed = run(migrated, "keys", "list")
    assert secret[:12] in listed.stdout
    assert secret not in listed.stdout


def test_list_as_json_and_revoke(migrated: str) -> None:
    created = msgspec.json.decode(
        run(migrated, "keys", "create", "--name", "to-revoke", "--json").stdout
    )
    revoked = run(migrated, "keys", "revoke", created["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {created['id']}" in revoked.stdout
    listed = msgspec.json.decode(run(migrated, "keys", "list", "--json").stdout)
    by_id = {key["id"]: key for key in listed}
    assert by_id[created["id"]]["revoked_at"] is not None
    assert all("secret" not in key and "key_hash" not in key for key in listed)
    active = msgspec.json.decode(run(migrated, "keys", "list", "--json", "--active").stdout)
    assert created["id"] not in {key["id"] for key in active}


def test_revoke_errors(migrated: str) -> None:
    bad_id = run(migrated, "keys", "revoke", "not-a-uuid")
    assert bad_id.returncode == 2
    assert "is not a key id" in bad_id.stderr
    unknown = run(migrated, "keys", "revoke", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1
    assert "does not exist" in unknown.stderr


def test_create_rejects_an_empty_name(migrated: str) -> None:
    result = run(migrated, "keys", "create", "--name", "   ")
    assert result.returncode == 2
    assert "--name" in result.stderr


def test_configs_list(migrated: str) -> None:
    empty = run(migrated, "configs", "list")
    assert empty.returncode == 0
    assert "no configurations yet" in empty.stdout
    assert msgspec.json.decode(run(migrated, "configs", "list", "--json").stdout) == []


def test_an_unreachable_database_is_one_clear_line() -> None:
    result = run("postgresql://postgres@127.0.0.1:1/nowhere", "keys", "list")
    assert result.returncode == 3
    assert result.stderr.startswith("error: postgresql://postgres@127.0.0.1:1/nowhere:")
    assert "unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unmigrated_database_says_what_to_run(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'empty.sqlite'}", "keys", "list")
    assert result.returncode == 3
    assert "switchboard db migrate" in result.stderr


def test_a_bad_setting_stops_with_its_name(tmp_path: Path) -> None:
    result = run(
        f"sqlite:///{tmp_path / 'x.sqlite'}",
        "keys",
        "list",
        extra_env={"SWITCHBOARD_LOG_LEVL": "DEBUG"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: unknown setting SWITCHBOARD_LOG_LEVL (did you mean SWITCHBOARD_LOG_LEVEL?)"
    )


def test_rollback_then_migrate_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rollback.sqlite'}"
    assert run(url, "db", "migrate").returncode == 0
    undone = run(url, "db", "rollback", "--yes")
    assert undone.returncode == 0, undone.stderr
    assert f"rolled back {MIGRATIONS} migration(s)" in undone.stdout
    assert run(url, "db", "status").stdout.count("pending") == MIGRATIONS
    assert run(url, "keys", "list").returncode == 3  # no tables: says to migrate
    assert run(url, "db", "migrate").returncode == 0
    assert run(url, "keys", "list").returncode == 0


async def test_db_status_writes_nothing_to_an_empty_database(tmp_path: Path) -> None:
    import asyncpg

    url = await create_postgres_database("switchboard_status")
    try:
        status = run(url, "db", "status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("pending") == MIGRATIONS
        connection = await asyncpg.connect(url)
        try:
            tables = await connection.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
        finally:
            await connection.close()
        assert tables == 0  # not even Piccolo's migration table
    finally:
        await drop_postgres_database(url)


@pytest.mark.parametrize("name", ["two\nlines", "fake\x1b[2K", "rtl\u202eevil", "zero\u200bwidth"])
def test_create_refuses_a_name_with_control_or_invisible_characters(
    migrated: str, name: str
) -> None:
    result = run(migrated, "keys", "create", "--name", name)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1  # the name's own line break is shown escaped
    assert "printable characters" in result.stderr
    assert name not in run(migrated, "keys", "list").stdout


def test_list_escapes_a_name_stored_before_names_were_checked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    assert run(url, "db", "migrate").returncode == 0
    assert run(url, "keys", "create", "--name", "old").returncode == 0
    connection = sqlite3.connect(tmp_path / "old.sqlite")
    with connection:
        connection.execute("UPDATE api_key SET name = ?", ("old\nfake-admin\x1b[31m",))
    connection.close()
    listed = run(url, "keys", "list")
    assert listed.returncode == 0
    assert "old\\nfake-admin\\x1b[31m" in listed.stdout
    assert len(listed.stdout.strip().splitlines()) == 2  # the header and one key


async def test_configs_list_escapes_stored_names_and_models(tmp_path: Path) -> None:
    """A model may hold any text but NUL (it is the upstream's name for it), and a name
    may predate the name rule: neither rewrites the terminal that lists them."""
    from functions.core.configs import service as configs
    from functions.core.configs.schemas import LLMConfigCreate
    from functions.core.db.engine import engine_from_url, use_engine

    url = f"sqlite:///{tmp_path / 'configs.sqlite'}"
    assert run(url, "db", "migrate").returncode == 0
    use_engine(engine_from_url(url))
    await configs.create_config(LLMConfigCreate(name="base", model="m\x1b]0;owned\x07\x1b[2J"))
    connection = sqlite3.connect(tmp_path / "configs.sqlite")
    with connection:
        connection.execute("UPDATE llm_config SET name = ?", ("old\x1b[31m\rfake",))
    connection.close()
    listed = run(url, "configs", "list")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout
    assert "\r" not in listed.stdout
    assert "old\\x1b[31m\\rfake" in listed.stdout
    assert "m\\x1b]0;owned\\x07\\x1b[2J" in listed.stdout
    assert len(listed.stdout.strip().splitlines()) == 2  # the header and one configuration


def test_messages_that_echo_stored_text_keep_their_lines_and_lose_escapes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from functions.cli import echo_escaped

    echo_escaped("line 1: item '\x1b[2Jx'\n  line 2: \u202eevil", err=True)
    shown = capsys.readouterr().err
    assert shown == "line 1: item '\\x1b[2Jx'\n  line 2: \\u202eevil\n"


def test_serve_refuses_credentials_in_an_llm_url_in_one_line(tmp_path: Path) -> None:
    result = run(
        f"sqlite:///{tmp_path / 'x.sqlite'}",
        "serve",
        extra_env={"SWITCHBOARD_LLM_URLS": "http://vllm:hunter2@127.0.0.1:8000/v1"},
    )
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout
    assert result.stderr.count("\n") == 1
    assert "SWITCHBOARD_LLM_API_KEY" in result.stderr


def test_a_keys_limits_are_set_on_create_and_replaced(migrated: str) -> None:
    created = run(
        migrated, "keys", "create", "--name", "limited", "--requests-per-minute", "60",
        "--tokens-per-day", "100000",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "limits: requests_per_minute=60, tokens_per_day=100000" in created.stdout
    key_id = created.stdout.split("id:", 1)[1].split()[0]
    replaced = run(migrated, "keys", "limits", key_id, "--max-concurrent", "4", "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert msgspec.json.decode(replaced.stdout)["limits"] == {
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "max_concurrent": 4,
        "tokens_per_day": None,
        "tokens_per_month": None,
    }
    refused = run(migrated, "keys", "limits", key_id, "--max-concurrent", "0")
    assert refused.returncode == 2
