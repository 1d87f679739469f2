"""structlog, configured once: JSON off a TTY, request context bound through contextvars.

``merge_contextvars`` runs first so a ``request_id`` bound by the web middleware (or a flow
run id bound by a flow) lands on every line logged while handling it. ``redact_secrets``
drops anything that looks like a credential before a renderer ever sees it, however deep
in a value (a list of URLs, a dict of headers, a Struct of settings) it sits.

Each HTTP request ends with one canonical line (``functions.core.web.context``); what the
layers below learn while handling it (the conversation, model, upstream, tokens) reaches
that line through :func:`note_request`. Prompt and reply text are only ever kept by
reference for it (:func:`note_request_text`), and written only where
``SWITCHBOARD_LOG_MESSAGE_TEXT`` asks for them.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import structlog

if TYPE_CHECKING:
    from collections.abc import MutableMapping

_SECRET_KEYS = re.compile(
    r"(authorization|api_key|apikey|secret|password|token_hash|key_hash)", re.I
)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.I)
# A key's display prefix ("sb-" and 9 characters, shown by `keys list`) is not a secret and
# is logged on purpose; anything longer may be (part of) a key.
_SB_KEY = re.compile(r"\bsb-[A-Za-z0-9_\-]{10,}")
# The same without the word boundary, which keeps the regex engine from skipping to "sb-":
# a quick test, run over many values at once (whatever _SB_KEY matches, it matches).
_SB_KEY_ANYWHERE = re.compile(r"sb-[A-Za-z0-9_\-]{10,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
REDACTED = "[redacted]"


def redact_text(text: str) -> str:
    """Mask bearer tokens, Switchboard keys and URL passwords inside free text."""
    # Each pattern runs only when its marker is in the text: most log values hold none,
    # and every line pays this (an upstream URL has "://" but no password, so no "@").
    if "sb-" in text:
        text = _SB_KEY.sub(REDACTED, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    if "@" in text and "://" in text:
        text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
    return text


# Values that never hold a secret: left alone without looking.
_PLAIN = (int, float, bool, type(None), bytes, datetime, date, uuid.UUID, Decimal)
# The same, as exact types: one set lookup for the common case before any isinstance.
_PLAIN_TYPES = frozenset(_PLAIN)
_MAX_DEPTH = 8


def redact_value(value: Any, depth: int = 0) -> Any:
    """``value`` with secrets masked at any depth: strings, the values of secret-named keys
    in mappings, lists, tuples and sets, Structs, and objects whose text holds one."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _PLAIN):
        return value
    if depth >= _MAX_DEPTH:
        return "[too deep]"  # also ends a structure that contains itself
    if isinstance(value, msgspec.Struct):
        value = msgspec.structs.asdict(value)
    if isinstance(value, (dict, Mapping)):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and _SECRET_KEYS.search(key) and item is not None
                else redact_value(item, depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value(item, depth + 1) for item in value]
    # Rendered as text anyway (str by the JSON renderer, repr on a console): a URL object
    # or an exception may carry a password inside.
    text = repr(value)
    masked = redact_text(text)
    return value if masked == text else masked


@functools.lru_cache(maxsize=256)
def _secret_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    # An event's keys are names from the code, so the few key sets seen are cached.
    return tuple(key for key in keys if isinstance(key, str) and _SECRET_KEYS.search(key))


def _marked(text: str) -> bool:
    """Whether :func:`redact_text` would change ``text``, or may: a key is looked for
    whole (a key's display prefix, on every request line, is not one), the others by
    their markers."""
    return (
        ("sb-" in text and _SB_KEY_ANYWHERE.search(text) is not None)
        or "earer" in text
        or "EARER" in text
        or ("@" in text and "://" in text)
    )


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Every line pays this, the canonical request line with twenty fields: the keys are
    # judged once per key set, and the text values are looked at together, value by value
    # only when one of them holds a marker. Values are replaced in place (no key added or
    # removed while iterating).
    secret = _secret_keys(tuple(event_dict))
    texts: list[str] = []
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            texts.append(value)
        elif kind not in _PLAIN_TYPES:
            event_dict[key] = redact_value(value)
    if texts and _marked("\n".join(texts)):
        for key, value in event_dict.items():
            if type(value) is str:
                event_dict[key] = redact_text(value)
    for key in secret:
        if event_dict[key] is not None:
            event_dict[key] = REDACTED
    return event_dict


_encoder = msgspec.json.Encoder(enc_hook=str)


def _render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog's ``JSONRenderer`` without its keyword plumbing: one msgspec encode."""
    return _encoder.encode(event_dict).decode()


class IsoUtcStamper:
    """``timestamp``, as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-12-08T01:20:00.123456Z``, microseconds always shown), with the date and time
    formatted once per second instead of a ``datetime`` built for every line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}{int((now - second) * 1e6):06d}Z"
        return event_dict


class LineWriter:
    """structlog's ``PrintLogger`` without ``print``: each line is one write and a flush,
    under a lock (a worker thread logs too)."""

    __slots__ = ("_flush", "_lock", "_write")

    def __init__(self, stream: Any) -> None:
        self._write = stream.write
        self._flush = stream.flush
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._write(message + "\n")
            self._flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure_logging(
    fmt: Literal["json", "console"] = "json", level: str = "INFO", *, stream: Any = None
) -> None:
    """Configure structlog and route the standard library's loggers through it."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        IsoUtcStamper(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        _render_json if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric_level = logging.getLevelName(level.upper())
    target = stream or sys.stderr
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_: LineWriter(target),
        cache_logger_on_first_use=True,
    )

    # Third-party libraries log through the standard library; give them the same format.
    handler = logging.StreamHandler(target)
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


def log_fields(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """``logger.info(event, **fields)`` for a line of many fields (the canonical request
    line): the same processors and output, without structlog's keyword plumbing, which
    copies the fields at each of its three calls (about half the line's cost). ``fields``
    becomes the event (the processors add to it)."""
    bound = logger.bind()  # the configured logger itself, cached after its first use
    if not bound.is_enabled_for(logging.INFO):
        return
    try:
        args, kwargs = bound._process_event("info", event, fields)
    except structlog.DropEvent:
        return
    bound._logger.info(*args, **kwargs)


class RequestFacts:
    """What handling one request learned, for its canonical log line.

    ``fields`` are logged as they are; ``prompt_text`` and ``reply_text`` only when the
    settings ask for message text in logs (never by default).
    """

    __slots__ = ("fields", "headers", "prompt_text", "reply_text")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.prompt_text: str | None = None
        self.reply_text: str | None = None
        # Headers the layers below ask the response to carry (the limits' x-ratelimit-*),
        # streamed responses too: their head is sent after the send was admitted.
        self.headers: list[tuple[bytes, bytes]] = []


# Holds a mutable object, not values: tasks started while handling the request (a
# streamed response's) copy the context, and their notes must still reach the line.
_request_facts: ContextVar[RequestFacts | None] = ContextVar(
    "switchboard_request_facts", default=None
)


@contextmanager
def collecting_request_facts() -> Iterator[RequestFacts]:
    """Collect :func:`note_request` calls made while handling one request."""
    facts = RequestFacts()
    token = _request_facts.set(facts)
    try:
        yield facts
    finally:
        _request_facts.reset(token)


def note_response_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Have the current request's response carry ``headers`` (replacing what an earlier
    call noted), if a request is being handled and its head is not sent yet."""
    facts = _request_facts.get()
    if facts is not None:
        facts.headers = headers


def note_request(**fields: Any) -> None:
    """Add facts (``None`` values left out) to the current request's log line, if any."""
    facts = _request_facts.get()
    if facts is not None:
        kept = facts.fields
        for key, value in fields.items():
            if value is not None:
                kept[key] = value


def note_request_text(*, prompt: str | None, reply: str | None) -> None:
    """Keep the message text of the current request, logged only if the settings say so."""
    facts = _request_facts.get()
    if facts is not None:
        facts.prompt_text = prompt
        facts.reply_text = reply
