"""Settings: one frozen Struct, read once from ``SWITCHBOARD_*`` environment variables.

Only the process edges (the CLI, an app factory, a flow entry point) call
:func:`load_settings`; everything below them is handed the Struct. A bad or unknown
variable stops start-up with one line that names it (:class:`SettingsError`).
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from functions.core import url_secrets

if TYPE_CHECKING:
    from collections.abc import Mapping

PREFIX = "SWITCHBOARD_"
DEFAULT_DATABASE_URL = "sqlite:///.switchboard/switchboard.sqlite"
DEFAULT_LLM_URL = "http://127.0.0.1:8000/v1"

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]


class SettingsError(Exception):
    """A configuration problem, phrased as the one line start-up prints before it stops."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every knob Switchboard reads from its environment.

    Each field ``name`` is set by the variable ``SWITCHBOARD_<NAME>``.
    """

    database_url: str = DEFAULT_DATABASE_URL
    database_pool_min: Annotated[int, Meta(ge=0)] = 1
    database_pool_max: PositiveInt = 20
    # "transaction" when database_url is a pooler in transaction mode (PgBouncer's
    # pool_mode = transaction): a server connection is lent for one transaction only, so
    # nothing may outlive one. asyncpg then prepares no statement for later (its statement
    # cache is off: a prepared statement lives on one server connection), and LISTEN, which
    # lives on its session, goes to database_listen_url instead (docs/operations.md).
    database_pool_mode: Literal["session", "transaction"] = "session"
    # A direct PostgreSQL URL for the one LISTEN connection of each serving process (health
    # verdicts, revocations, deletions reach it at once). Unset in transaction mode, no
    # process hears notifications: each reads health every 5 s, checks keys on every
    # request, and a deleted conversation's reply in another process runs to its end.
    database_listen_url: str | None = None

    llm_urls: tuple[str, ...] = (DEFAULT_LLM_URL,)
    llm_api_key: str | None = None
    llm_connect_timeout_s: PositiveFloat = 5.0
    llm_first_token_timeout_s: PositiveFloat = 60.0
    llm_token_timeout_s: PositiveFloat = 30.0
    llm_total_timeout_s: PositiveFloat = 600.0
    llm_max_retries: Annotated[int, Meta(ge=0)] = 2
    llm_max_inflight_per_upstream: PositiveInt = 256
    llm_eject_after_failures: PositiveInt = 3
    llm_eject_cooldown_s: PositiveFloat = 10.0
    # vLLM servers of embedding models (vLLM serves embeddings only from one, never beside
    # chat): ``/v1/embeddings`` goes to them, chat and completions never do.
    embedding_urls: tuple[str, ...] = ()

    log_format: Literal["json", "console"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    max_body_bytes: PositiveInt = 1024 * 1024
    # What one connection may cost `switchboard serve` (functions/http_limits.py): the
    # request line and headers, their count, the time to send them and the body, the idle
    # time between requests, and how many connections a worker keeps open.
    http_max_head_bytes: Annotated[int, Meta(ge=1024, le=1024 * 1024)] = 32 * 1024
    http_max_headers: Annotated[int, Meta(ge=8, le=1000)] = 100
    http_head_timeout_s: PositiveFloat = 10.0
    http_body_timeout_s: PositiveFloat = 60.0
    http_send_timeout_s: PositiveFloat = 60.0
    http_keep_alive_s: Annotated[int, Meta(ge=1, le=3600)] = 5
    http_max_connections: PositiveInt = 1000
    # The most characters one chat message may have (at most 400000, the API's own limit).
    max_message_chars: Annotated[int, Meta(ge=1, le=400_000)] = 400_000
    # About how many bytes of messages one page of a history holds (always at least one
    # message): what listing a conversation of long messages may cost.
    max_page_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    send_lock_timeout_s: PositiveFloat = 30.0
    # How long a process remembers a key that authenticated; 0 checks the database on
    # every request. A revocation reaches every process at once: NOTIFY on PostgreSQL, a
    # marker file next to the database on SQLite (functions/core/keys/revocations.py).
    auth_cache_ttl_s: Annotated[float, Meta(ge=0, le=300)] = 5.0

    # A serving process renews its lease this often (a third of it); a pending reply whose
    # process let its lease lapse is retired as interrupted.
    lease_ttl_s: Annotated[float, Meta(ge=1, le=600)] = 10.0
    # How long writing a reply's outcome is retried while the database is unreachable.
    outcome_retry_s: PositiveFloat = 30.0
    # Where outcomes not yet written are kept across a stop (functions/core/chat/journal.py):
    # unset, `<sqlite file>.outcomes/` on SQLite, `.switchboard/outcomes/` on PostgreSQL.
    outcome_journal_dir: str | None = None
    # The most one process's journal may hold; past it an outcome is kept in memory only
    # (and its client told so).
    outcome_journal_max_bytes: Annotated[int, Meta(ge=64 * 1024)] = 256 * 1024 * 1024
    # On SIGTERM: how long in-flight sends may finish before they are ended as `shutdown`.
    shutdown_grace_s: Annotated[float, Meta(ge=0, le=3600)] = 120.0
    # How long an Idempotency-Key is remembered.
    idempotency_window_s: Annotated[float, Meta(ge=60)] = 86_400.0
    # The most stored messages a prompt carries when its configuration sets no
    # history_window: bounds a send's memory and the prompt whatever the history's length.
    history_max_messages: Annotated[int, Meta(ge=1, le=100_000)] = 1000

    # Limits (functions/core/limits, docs/operations.md). Where their counters live:
    # unset, this process's memory; redis://host:6379/0 (or rediss://), shared by every
    # worker and replica. How long one check may wait for it before this process enforces
    # its share of each limit in memory (the limit divided by the live processes).
    rate_limit_url: str | None = None
    rate_limit_timeout_s: Annotated[float, Meta(gt=0, le=5)] = 0.1
    # The limits of keys that set none of their own (unset: no limit).
    limit_default_requests_per_minute: PositiveInt | None = None
    limit_default_tokens_per_minute: PositiveInt | None = None
    limit_default_max_concurrent: PositiveInt | None = None
    limit_default_tokens_per_day: PositiveInt | None = None
    limit_default_tokens_per_month: PositiveInt | None = None
    # What a send reserves for its reply when neither it nor its configuration sets
    # max_tokens (refunded when the reply is shorter).
    limit_reserve_max_tokens: PositiveInt = 4096
    # How a prompt's tokens are reserved: "estimate" (4 characters a token, no cost), or
    # "tokenize", counted by the upstream's /tokenize when the whole prompt is known (the
    # OpenAI door): exact, for one more short upstream call per send.
    limit_prompt_tokens: Literal["estimate", "tokenize"] = "estimate"

    # The scheduled flows (flows/). The health check runs this often; every serving
    # process lets a recorded verdict steer routing for 180 s (health/watcher.py), so the
    # interval stays well below that.
    health_check_interval_s: Annotated[float, Meta(ge=5, le=120)] = 60.0
    # Also ask each healthy upstream for one token: a real completion through the engine,
    # which catches a model that hangs behind a healthy /health, but costs GPU time.
    health_check_completion: bool = False
    health_check_completion_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 10.0
    # Recorded health checks older than this are pruned (by both flows).
    health_retention_days: Annotated[float, Meta(gt=0, le=3650)] = 7.0
    # The maintenance flow: retire replies of dead processes, prune what has expired.
    maintenance_interval_s: Annotated[float, Meta(ge=10, le=86_400)] = 300.0

    # Operations. Prompt and reply text on each request's log line: off by default, since
    # logs usually travel further (collectors, Loki, support tickets) than the database.
    log_message_text: bool = False
    # Where flow runs push their metrics (a Prometheus Pushgateway, e.g.
    # http://pushgateway:9091); unset, they push nothing (functions/core/flow_metrics.py).
    metrics_pushgateway_url: str | None = None
    # Key names whose usage /metrics shows under their own `key` label (comma-separated);
    # every other key counts as `other`, so the label stays bounded by the operator's list.
    metrics_key_names: tuple[str, ...] = ()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:")

    @property
    def resolved_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stderr.isatty() else "json"


_FIELDS = {name.upper(): name for name in Settings.__struct_fields__}
_TUPLE_FIELDS = {"llm_urls", "embedding_urls", "metrics_key_names"}
# SWITCHBOARD_TEST_* variables belong to the test suite's tooling (the database it uses,
# how far it stretches its waits), not to the service.
_NOT_SETTINGS_PREFIX = "TEST_"


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(
    environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")
) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``) and a ``.env`` file.

    Real environment variables win over the ``.env`` file. Raises :class:`SettingsError`
    naming the offending variable for an unknown ``SWITCHBOARD_*`` name or a bad value.
    """
    source: dict[str, str] = _read_dotenv(dotenv) if dotenv is not None else {}
    source.update(os.environ if environ is None else environ)

    raw: dict[str, object] = {}
    for key, value in source.items():
        if not key.startswith(PREFIX):
            continue
        suffix = key.removeprefix(PREFIX)
        if suffix.startswith(_NOT_SETTINGS_PREFIX):
            continue
        field = _FIELDS.get(suffix)
        if field is None:
            guess = difflib.get_close_matches(suffix, _FIELDS, n=1)
            hint = f" (did you mean {PREFIX}{guess[0]}?)" if guess else ""
            raise SettingsError(f"unknown setting {key}{hint}")
        if field in _TUPLE_FIELDS:
            raw[field] = tuple(
                part.strip().rstrip("/") for part in value.split(",") if part.strip()
            )
        elif value == "" and field in {
            "llm_api_key",
            "database_listen_url",
            "log_format",
            "metrics_pushgateway_url",
            "outcome_journal_dir",
            "rate_limit_url",
            "limit_default_requests_per_minute",
            "limit_default_tokens_per_minute",
            "limit_default_max_concurrent",
            "limit_default_tokens_per_day",
            "limit_default_tokens_per_month",
        }:
            raw[field] = None
        elif field == "log_level":
            raw[field] = value.upper()
        else:
            raw[field] = value

    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc, raw)) from None
    _check(settings)
    return settings


def is_configured(
    field: str, environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")
) -> bool:
    """Whether ``field`` is set explicitly (environment or ``.env``), not left at its default."""
    name = env_name(field)
    source = os.environ if environ is None else environ
    return name in source or (dotenv is not None and name in _read_dotenv(dotenv))


def _describe(exc: msgspec.ValidationError, raw: Mapping[str, object]) -> str:
    text = str(exc)
    for field in raw:
        if f"`$.{field}`" in text or f"`$.{field}[" in text:
            reason = text.split(" - at ", maxsplit=1)[0]
            return f"invalid {env_name(field)}={raw[field]!r}: {reason}"
    return f"invalid settings: {text}"


def _check_llm_url(llm_url: str, field: str = "llm_urls") -> None:
    """An http(s) URL with a host, a valid port, and no credentials or query in it.

    Credentials in the URL are refused rather than sent: vLLM takes a bearer token
    (``SWITCHBOARD_LLM_API_KEY``), and a password in a URL ends up in logs, metrics labels
    and readiness reports. The message never repeats the password.
    """
    shown = url_secrets.shown(llm_url)
    name = env_name(field)
    if url_secrets.has_credentials(llm_url):
        raise SettingsError(
            f"invalid {name} entry {shown!r}: credentials in the URL are not supported; "
            f"put the token in {env_name('llm_api_key')} (sent as Authorization: Bearer)"
        )
    try:
        parts = urlsplit(llm_url)
        valid = bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a bad port or IPv6 literal
        valid = False
    if not valid or parts.scheme not in ("http", "https"):
        raise SettingsError(
            f"invalid {name} entry {shown!r}: "
            "expected an http(s) base URL such as http://127.0.0.1:8000/v1"
        )
    if url_secrets.has_query(llm_url):
        raise SettingsError(
            f"invalid {name} entry {shown!r}: a query or fragment in the URL is not "
            f"supported; give the base URL only, and a token in {env_name('llm_api_key')}"
        )


def _check(settings: Settings) -> None:
    url = settings.database_url
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise SettingsError(
            f"invalid {env_name('database_url')}={url!r}: "
            "expected postgresql://user@host:port/db or sqlite:///path/to/file.sqlite"
        )
    listen_url = settings.database_listen_url
    if listen_url is not None and not listen_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(
            f"invalid {env_name('database_listen_url')}={url_secrets.shown(listen_url)!r}: "
            "expected postgresql://user@host:port/db, a direct connection to PostgreSQL"
        )
    if listen_url is not None and settings.is_sqlite:
        raise SettingsError(
            f"invalid {env_name('database_listen_url')}: only for a PostgreSQL "
            f"{env_name('database_url')} (SQLite's notifications are polled from its file)"
        )
    if settings.database_pool_mode == "transaction" and settings.is_sqlite:
        raise SettingsError(
            f"invalid {env_name('database_pool_mode')}=transaction: only for PostgreSQL "
            "behind a pooler such as PgBouncer, not SQLite"
        )
    limit_url = settings.rate_limit_url
    if limit_url is not None and not limit_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"invalid {env_name('rate_limit_url')}={url_secrets.shown(limit_url)!r}: "
            "expected redis://host:6379/0 (rediss:// for TLS, unix:///path for a socket)"
        )
    if not settings.llm_urls:
        raise SettingsError(f"invalid {env_name('llm_urls')}: give at least one vLLM base URL")
    for llm_url in settings.llm_urls:
        _check_llm_url(llm_url)
    for embedding_url in settings.embedding_urls:
        _check_llm_url(embedding_url, "embedding_urls")
    if settings.database_pool_min > settings.database_pool_max:
        raise SettingsError(
            f"invalid {env_name('database_pool_min')}: larger than {env_name('database_pool_max')}"
        )
