"""structlog, configured once: JSON off a TTY, request context bound through contextvars.

``merge_contextvars`` runs first so a ``request_id`` bound by the web middleware (or a flow
run id bound by a flow) lands on every line logged while handling it. ``redact_secrets``
drops anything that looks like a credential before a renderer ever sees it.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import structlog

if TYPE_CHECKING:
    from collections.abc import MutableMapping

_SECRET_KEYS = re.compile(
    r"(authorization|api_key|apikey|secret|password|token_hash|key_hash)", re.I
)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.I)
_SB_KEY = re.compile(r"\bsb-[A-Za-z0-9_\-]{8,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
REDACTED = "[redacted]"


def redact_text(text: str) -> str:
    """Mask bearer tokens, Switchboard keys and URL passwords inside free text."""
    # Most log values hold none of these; skip the regexes for them (every line pays this).
    if "sb-" not in text and "://" not in text and "earer" not in text:
        return text
    text = _BEARER.sub(r"\1" + REDACTED, text)
    text = _SB_KEY.sub(REDACTED, text)
    return _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


_encoder = msgspec.json.Encoder(enc_hook=str)


def _dumps(obj: Any, **_: Any) -> str:
    return _encoder.encode(obj).decode()


def configure_logging(
    fmt: Literal["json", "console"] = "json", level: str = "INFO", *, stream: Any = None
) -> None:
    """Configure structlog and route the standard library's loggers through it."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )

    # Third-party libraries log through the standard library; give them the same format.
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for noisy in ("uvicorn.access", "httpx", "httpcore", "aiosqlite", "asyncio", "piccolo"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
