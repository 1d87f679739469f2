from __future__ import annotations

import io

import msgspec
import structlog

from functions.core.logging import configure_logging, get_logger


def capture_json(**bound: object) -> tuple[io.StringIO, object]:
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**bound)
    return stream, get_logger("test")


def test_lines_are_json_with_the_bound_request_id() -> None:
    stream, log = capture_json(request_id="req-123")
    log.info("request.done", status=200)  # type: ignore[attr-defined]
    structlog.contextvars.clear_contextvars()
    line = msgspec.json.decode(stream.getvalue().splitlines()[-1])
    assert line["event"] == "request.done"
    assert line["request_id"] == "req-123"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_secrets_never_reach_the_output() -> None:
    stream, log = capture_json()
    secret = "sb-" + "S3cr3t" * 7
    log.info(  # type: ignore[attr-defined]
        "calling",
        authorization=f"Bearer {secret}",
        api_key=secret,
        note=f"user pasted {secret} into the chat",
        url="postgresql://app:hunter2@db:5432/switchboard",
    )
    output = stream.getvalue()
    assert secret not in output
    assert "hunter2" not in output
    assert "[redacted]" in output
