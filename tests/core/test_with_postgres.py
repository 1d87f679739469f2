"""scripts/with-postgres.sh: the throwaway-cluster fallback that ``make test`` relies on when
no PostgreSQL answers on 127.0.0.1:5432."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support import process

SCRIPT = Path(__file__).parents[2] / "scripts" / "with-postgres.sh"
PROBE = (
    "import asyncio, os, asyncpg\n"
    "async def main():\n"
    "    url = os.environ['SWITCHBOARD_TEST_DATABASE_URL']\n"
    "    conn = await asyncpg.connect(url)\n"
    "    print(url, await conn.fetchval('SHOW data_directory'))\n"
    "    await conn.close()\n"
    "asyncio.run(main())\n"
)


def test_a_throwaway_cluster_is_started_used_and_removed() -> None:
    env = {**os.environ, "SWITCHBOARD_TEST_FORCE_INITDB": "1"}
    result = process.run(
        [str(SCRIPT), sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=process.scaled(120),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "starting a throwaway PostgreSQL" in result.stderr
    url, data_directory = result.stdout.split()
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert not url.startswith("postgresql://postgres@127.0.0.1:5432/")
    assert not Path(data_directory).exists()  # stopped and deleted afterwards


def test_the_command_exit_code_is_passed_through() -> None:
    env = {**os.environ, "SWITCHBOARD_TEST_FORCE_INITDB": "1"}
    result = process.run(
        [str(SCRIPT), sys.executable, "-c", "raise SystemExit(7)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=process.scaled(120),
        check=False,
    )
    assert result.returncode == 7
