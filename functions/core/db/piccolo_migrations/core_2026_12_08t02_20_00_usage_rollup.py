"""The usage rollup (``functions.core.usage.rollup``): ``usage_rollup`` and the trigger on
``usage_ledger`` that keeps it, on both engines, filled from the ledger already written.

Raw SQL, outside the Piccolo app (as SQLite's own tables are): its key spans eight
columns and its histograms 82, which Piccolo's table model cannot say portably. The key's
columns are NOT NULL (an absent configuration, model, upstream or error is ``''``, an
absent version 0), so an upsert finds the row: NULLs never conflict. The trigger adds a
new ledger row, takes back a replaced one's old values and adds its new ones (a reply
finished after a sweep retired it), and takes back a deleted one, inside the statement
that changed the ledger: the rollup equals the ledger in every transaction.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-08T02:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "usage_rollup: the ledger per hour, key, configuration, model, upstream, status"

# The histogram's bounds, as functions/core/usage/rollup.py has them (a test compares).
BOUNDS_MS = tuple(2 ** (k / 2) for k in range(40))
_BUCKETS = len(BOUNDS_MS) + 1
KEY = (
    "hour",
    "owner_key",
    "config_name",
    "config_version",
    "model",
    "upstream",
    "status",
    "error_code",
)
SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    *(f"latency_b{k:02d}" for k in range(_BUCKETS)),
    *(f"ttft_b{k:02d}" for k in range(_BUCKETS)),
)


def _hour(column: str, postgres: bool) -> str:
    if postgres:
        return f"date_trunc('hour', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    # Stored as Python's str() of the UTC time: "2026-12-08 01:23:45.678901+00:00".
    return f"substr({column}, 1, 13) || ':00:00+00:00'"


def _bucket(row: str, column: str, k: int) -> str:
    """The condition for ``row``'s ``column`` to count in bucket ``k``."""
    conditions = [f"{row}.status = 'complete'", f"{row}.{column} IS NOT NULL"]
    if k > 0:
        conditions.append(f"{row}.{column} >= {BOUNDS_MS[k - 1]!r}")
    if k < len(BOUNDS_MS):
        conditions.append(f"{row}.{column} < {BOUNDS_MS[k]!r}")
    return " AND ".join(conditions)


def _values(row: str, sign: str, postgres: bool, *, summed: bool = False) -> list[str]:
    """``row``'s contribution (``sign`` 1 or -1); ``summed``: aggregated over a group."""

    def total(expression: str) -> str:
        return f"sum({expression})" if summed else expression

    key = [
        _hour(f"{row}.asked_at", postgres),
        f"{row}.owner_key",
        f"COALESCE({row}.config_name, '')",
        f"COALESCE({row}.config_version, 0)",
        f"COALESCE({row}.model, '')",
        f"COALESCE({row}.upstream, '')",
        f"{row}.status",
        f"COALESCE({row}.error_code, '')",
    ]
    sums = [
        total(sign),
        total(f"{sign} * COALESCE({row}.prompt_tokens, 0)"),
        total(f"{sign} * COALESCE({row}.completion_tokens, 0)"),
        *(
            total(f"CASE WHEN {_bucket(row, column, k)} THEN {sign} ELSE 0 END")
            for column in ("latency_ms", "ttft_ms")
            for k in range(_BUCKETS)
        ),
    ]
    return key + sums


_COLUMNS = ", ".join(KEY + SUMS)
_UPSERT = f" ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET " + ", ".join(
    f"{name} = usage_rollup.{name} + excluded.{name}" for name in SUMS
)


def _add(row: str, sign: str, postgres: bool) -> str:
    values = ", ".join(_values(row, sign, postgres))
    return f"INSERT INTO usage_rollup ({_COLUMNS}) VALUES ({values}){_UPSERT}"


def _table(postgres: bool) -> str:
    uuid, time = ("uuid", "timestamptz") if postgres else ("TEXT", "TEXT")
    sums = ", ".join(f"{name} bigint NOT NULL DEFAULT 0" for name in SUMS)
    return (
        f"CREATE TABLE usage_rollup (hour {time} NOT NULL, owner_key {uuid} NOT NULL, "
        "config_name varchar(100) NOT NULL, config_version integer NOT NULL, "
        "model varchar(200) NOT NULL, upstream varchar(500) NOT NULL, "
        "status varchar(16) NOT NULL, error_code varchar(64) NOT NULL, "
        f"{sums}, PRIMARY KEY ({', '.join(KEY)}))"
    )


def _fill(postgres: bool) -> str:
    """The rollup of the ledger as it stands (the upgrade's first rows)."""
    values = ", ".join(_values("u", "1", postgres, summed=True))
    groups = ", ".join(str(i) for i in range(1, len(KEY) + 1))
    return (
        f"INSERT INTO usage_rollup ({_COLUMNS}) SELECT {values} FROM usage_ledger u "
        f"GROUP BY {groups}"
    )


# One key's usage over a window (a chat key's own report).
_OWNER_INDEX = "CREATE INDEX usage_rollup_owner_hour_idx ON usage_rollup (owner_key, hour)"

PG_FORWARDS = (
    _table(postgres=True),
    _OWNER_INDEX,
    "CREATE OR REPLACE FUNCTION switchboard_usage_rollup() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    f"IF TG_OP <> 'INSERT' THEN {_add('OLD', '-1', postgres=True)}; END IF; "
    f"IF TG_OP <> 'DELETE' THEN {_add('NEW', '1', postgres=True)}; END IF; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER usage_ledger_rollup AFTER INSERT OR UPDATE OR DELETE ON usage_ledger "
    "FOR EACH ROW EXECUTE FUNCTION switchboard_usage_rollup()",
    _fill(postgres=True),
)
PG_BACKWARDS = (
    "DROP TRIGGER IF EXISTS usage_ledger_rollup ON usage_ledger",
    "DROP FUNCTION IF EXISTS switchboard_usage_rollup()",
    "DROP TABLE IF EXISTS usage_rollup",
)
SQLITE_FORWARDS = (
    _table(postgres=False),
    _OWNER_INDEX,
    "CREATE TRIGGER usage_ledger_rollup_insert AFTER INSERT ON usage_ledger BEGIN "
    f"{_add('NEW', '1', postgres=False)}; END",
    "CREATE TRIGGER usage_ledger_rollup_update AFTER UPDATE ON usage_ledger BEGIN "
    f"{_add('OLD', '-1', postgres=False)}; {_add('NEW', '1', postgres=False)}; END",
    "CREATE TRIGGER usage_ledger_rollup_delete AFTER DELETE ON usage_ledger BEGIN "
    f"{_add('OLD', '-1', postgres=False)}; END",
    _fill(postgres=False),
)
SQLITE_BACKWARDS = (
    "DROP TRIGGER IF EXISTS usage_ledger_rollup_insert",
    "DROP TRIGGER IF EXISTS usage_ledger_rollup_update",
    "DROP TRIGGER IF EXISTS usage_ledger_rollup_delete",
    "DROP TABLE IF EXISTS usage_rollup",
)


async def _run(postgres: tuple[str, ...], sqlite: tuple[str, ...]) -> None:
    engine = engine_finder()
    assert engine is not None
    for ddl in postgres if engine.engine_type == "postgres" else sqlite:
        await engine.run_ddl(ddl)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def install() -> None:
        await _run(PG_FORWARDS, SQLITE_FORWARDS)

    async def uninstall() -> None:
        await _run(PG_BACKWARDS, SQLITE_BACKWARDS)

    manager.add_raw(install)
    manager.add_raw_backwards(uninstall)
    return manager
