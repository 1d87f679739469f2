"""History export throughput and memory: 100k and 1M messages, per format and engine.

Seeds a fresh database (PostgreSQL from ``scripts/with-postgres.sh``, and a SQLite file)
with a synthetic history (Korean and emoji text, content parts, tool calls, every reply
with its usage and timings), then exports it to a temporary folder once per format, each
export in a fresh process pinned to one core, and reports messages per second and the
exporting process's peak RSS (``ru_maxrss``: imports included; ``rss_before`` is the
same process just before the export starts).

    scripts/with-postgres.sh .venv/bin/python -m bench.bench_export
    ... -m bench.bench_export --sizes 100000 --engines sqlite --formats parquet

Targets (issue 11): at least 100,000 messages/s to JSONL and Parquet on one core, peak RSS
under 200 MB at 1M messages and flat between 100k and 1M.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
START = datetime(2026, 1, 1, tzinfo=UTC)
PER_CONVERSATION = 10
CHUNK = 50_000
SENDS_PER_COMMIT = 100

USER_TEXT = "안녕하세요! 이번 분기 보고서를 요약해 줄 수 있나요? 🙏 Here is the context: "
REPLY_TEXT = (
    "물론입니다 😀 The report covers revenue, hiring and the roadmap. 요약하면: "
    "1) 매출 증가, 2) 채용 확대, 3) 로드맵 조정. Let me know if you need more detail. "
)


def _message(conversation: uuid.UUID, seq: int, index: int, config: uuid.UUID) -> tuple[Any, ...]:
    created = START + timedelta(milliseconds=index * 7)
    user = seq % 2 == 1
    parts = None
    tool_calls = None
    if user and index % 20 == 1:
        parts = json.dumps(
            [
                {"type": "text", "text": "이 그림을 설명해 주세요 🖼️"},
                {"type": "image_url", "image_url": {"url": "https://example.com/차트.png"}},
            ],
            ensure_ascii=False,
        )
    if not user and index % 50 == 0:
        tool_calls = json.dumps(
            [
                {
                    "id": f"call_{index}",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "날씨 ☀️"}'},
                }
            ],
            ensure_ascii=False,
        )
    if user:
        return (
            uuid.uuid4(), conversation, seq, "user", USER_TEXT + str(index), parts, None,
            None, None, "complete", None, None, None, None, None, None, None, None, None,
            None, None, created, created,
        )  # fmt: skip
    return (
        uuid.uuid4(), conversation, seq, "assistant", REPLY_TEXT + str(index), None,
        tool_calls, None, None, "complete", config, "sim-model", 120 + index % 50,
        40 + index % 200, 812.5, 95.25, "stop", None, None, f"req-{index}", None,
        created, created + timedelta(milliseconds=800),
    )  # fmt: skip


MESSAGE_COLUMNS = (
    "id", "conversation", "seq", "role", "content", "content_parts", "tool_calls",
    "tool_call_id", "name", "status", "llm_config", "model", "prompt_tokens",
    "completion_tokens", "latency_ms", "ttft_ms", "finish_reason", "error_code",
    "error_message", "upstream_request_id", "owner_instance", "created_at", "completed_at",
)  # fmt: skip
CONVERSATION_COLUMNS = (
    "id", "owner_key", "config_name", "title", "metadata", "last_seq", "created_at",
    "updated_at",
)  # fmt: skip


def _chunks(first: int, last: int, owner: uuid.UUID, config: uuid.UUID) -> Any:
    """(conversations, messages) for messages first..last-1, CHUNK messages at a time."""
    for start in range(first, last, CHUNK):
        conversations, messages = [], []
        for base in range(start, min(start + CHUNK, last), PER_CONVERSATION):
            conversation = uuid.uuid4()
            created = START + timedelta(milliseconds=base * 7)
            conversations.append(
                (
                    conversation, owner, "default", f"대화 {base} 💬",
                    json.dumps({"team": "연구소", "n": base}, ensure_ascii=False),
                    PER_CONVERSATION, created, created + timedelta(seconds=5),
                )
            )  # fmt: skip
            for seq in range(1, PER_CONVERSATION + 1):
                messages.append(_message(conversation, seq, base + seq - 1, config))
        yield conversations, messages


async def seed_postgres(url: str, first: int, last: int) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        owner, config = await _owner_and_config_pg(connection)
        for conversations, messages in _chunks(first, last, owner, config):
            await connection.copy_records_to_table(
                "conversation", records=conversations, columns=CONVERSATION_COLUMNS
            )
            # A transaction per few sends, as a gateway writes them: an export walks the
            # messages in commit order, which one huge COPY would leave in random id order.
            for first_row in range(0, len(messages), SENDS_PER_COMMIT):
                await connection.copy_records_to_table(
                    "message",
                    records=messages[first_row : first_row + SENDS_PER_COMMIT],
                    columns=MESSAGE_COLUMNS,
                )
        await connection.execute("ANALYZE message; ANALYZE conversation")
    finally:
        await connection.close()


async def _owner_and_config_pg(connection: Any) -> tuple[uuid.UUID, uuid.UUID]:
    owner = await connection.fetchval("SELECT id FROM api_key LIMIT 1")
    if owner is None:
        owner = uuid.uuid4()
        await connection.execute(
            "INSERT INTO api_key (id, name, prefix, key_hash, scopes, created_at) "
            "VALUES ($1, 'bench', 'sb-bench', $2, '{chat}', now())",
            owner,
            uuid.uuid4().hex + uuid.uuid4().hex,
        )
    config = await connection.fetchval("SELECT id FROM llm_config LIMIT 1")
    if config is None:
        config = uuid.uuid4()
        await connection.execute(
            "INSERT INTO llm_config (id, name, version, model, extra, is_default, created_at) "
            "VALUES ($1, 'default', 1, 'sim-model', '{}', false, now())",
            config,
        )
    return owner, config


def _sqlite_value(value: Any) -> Any:
    # As Piccolo stores them: UUIDs as text, times as str() of the UTC datetime.
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return str(value.astimezone(UTC))
    return value


def seed_sqlite(path: Path, first: int, last: int) -> None:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT id FROM api_key LIMIT 1").fetchone()
        if row is None:
            owner = uuid.uuid4()
            connection.execute(
                "INSERT INTO api_key (id, name, prefix, key_hash, scopes, created_at) "
                "VALUES (?, 'bench', 'sb-bench', ?, '[\"chat\"]', ?)",
                (str(owner), uuid.uuid4().hex * 2, str(START)),
            )
            config = uuid.uuid4()
            connection.execute(
                "INSERT INTO llm_config (id, name, version, model, extra, is_default, "
                "created_at) VALUES (?, 'default', 1, 'sim-model', '{}', 0, ?)",
                (str(config), str(START)),
            )
        else:
            owner = uuid.UUID(row[0])
            config = uuid.UUID(connection.execute("SELECT id FROM llm_config").fetchone()[0])
        for conversations, messages in _chunks(first, last, owner, config):
            connection.executemany(
                f"INSERT INTO conversation ({', '.join(CONVERSATION_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(CONVERSATION_COLUMNS))})",
                [tuple(_sqlite_value(v) for v in row) for row in conversations],
            )
            connection.executemany(
                f"INSERT INTO message ({', '.join(MESSAGE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(MESSAGE_COLUMNS))})",
                [tuple(_sqlite_value(v) for v in row) for row in messages],
            )
            connection.commit()
        connection.execute("ANALYZE")
        connection.commit()
    finally:
        connection.close()


async def child(url: str, fmt: str, out: str, core: int) -> None:
    """One export in this process, pinned to one core; prints its numbers as JSON."""
    os.sched_setaffinity(0, {core})
    from functions.core.exports.schemas import ExportRequest
    from functions.core.exports.service import export_history
    from functions.core.runtime import open_runtime
    from functions.core.settings import load_settings
    from tests.core.exports.conftest import writers_ended

    settings = load_settings({"SWITCHBOARD_DATABASE_URL": url}, dotenv=None)
    async with open_runtime(settings, use_llm=False, configure_logs=False):
        # The export takes what was committed before the oldest write still open on the
        # server began (another session's, on a shared server): wait for it to end.
        await writers_ended()
        rss_before = _rss_mb()
        started = time.perf_counter()
        cpu_started = time.process_time()
        result = await export_history(
            ExportRequest(destination=out, format=fmt, full=True)  # type: ignore[arg-type]
        )
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(file.bytes for file in result.manifest.files)
    print(
        json.dumps(
            {
                "messages": result.manifest.messages,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "rss_before_mb": rss_before,
                "peak_rss_mb": peak,
                "bytes": size,
            }
        )
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(url: str, fmt: str, core: int) -> dict[str, Any]:
    out = tempfile.mkdtemp(prefix=f"bench-export-{fmt}-")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.bench_export", "--child", url, fmt, out, str(core)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "SWITCHBOARD_LOG_LEVEL": "warning"},
        )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


async def _migrated_postgres() -> str:
    from functions.core.db.engine import engine_from_url
    from functions.core.db.migrate import migrate
    from tests.support.databases import create_postgres_database

    url = await create_postgres_database("switchboard_bench_export")
    engine = engine_from_url(url)
    await migrate(engine)
    return url


async def _migrated_sqlite(path: Path) -> str:
    from functions.core.db.engine import create_sqlite_file, engine_from_url
    from functions.core.db.migrate import migrate

    url = f"sqlite:///{path}"
    engine = engine_from_url(url)
    create_sqlite_file(engine)
    await migrate(engine)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--formats", default="jsonl,parquet,csv")
    parser.add_argument("--engines", default="postgres,sqlite")
    parser.add_argument("--core", type=int, default=0, help="the core the exporter runs on")
    parser.add_argument("--child", nargs=4, metavar=("URL", "FORMAT", "OUT", "CORE"))
    args = parser.parse_args()
    if args.child:
        url, fmt, out, core = args.child
        asyncio.run(child(url, fmt, out, int(core)))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    formats = args.formats.split(",")
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        for engine in args.engines.split(","):
            rows += _bench_engine(engine, sizes, formats, workdir, args.core)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"export-{stamp}.json").write_text(json.dumps(rows, indent=2))


def _bench_engine(
    engine: str, sizes: list[int], formats: list[str], workdir: Path, core: int
) -> list[dict[str, Any]]:
    if engine == "postgres":
        url = asyncio.run(_migrated_postgres())
    else:
        url = asyncio.run(_migrated_sqlite(workdir / "bench.sqlite"))
    rows = []
    seeded = 0
    print(f"\n{engine}")
    print(
        f"{'messages':>9} {'format':>8} {'seconds':>8} {'msg/s':>9} {'msg/cpu-s':>10} "
        f"{'rss before':>10} {'peak rss':>9} {'file MB':>8}"
    )
    try:
        for size in sizes:
            started = time.perf_counter()
            if engine == "postgres":
                asyncio.run(seed_postgres(url, seeded, size))
            else:
                seed_sqlite(workdir / "bench.sqlite", seeded, size)
            print(f"  (seeded {size - seeded:,} messages in {time.perf_counter() - started:.0f} s)")
            seeded = size
            for fmt in formats:
                result = run_child(url, fmt, core)
                assert result["messages"] == size, result
                row = {"engine": engine, "format": fmt, **result}
                rows.append(row)
                print(
                    f"{size:>9,} {fmt:>8} {result['seconds']:>8.2f} "
                    f"{size / result['seconds']:>9,.0f} {size / result['cpu_seconds']:>10,.0f} "
                    f"{result['rss_before_mb']:>8.0f}MB {result['peak_rss_mb']:>7.0f}MB "
                    f"{result['bytes'] / 2**20:>8.1f}"
                )
    finally:
        if engine == "postgres":
            from tests.support.databases import drop_postgres_database

            asyncio.run(drop_postgres_database(url))
    return rows


if __name__ == "__main__":
    main()
