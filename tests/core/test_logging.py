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


def test_secrets_inside_lists_mappings_structs_and_objects_are_redacted() -> None:
    import httpx

    from functions.core.settings import Settings

    stream, log = capture_json()
    secret = "sb-" + "N3st3d" * 7
    log.info(  # type: ignore[attr-defined]
        "function.started",
        llm_urls=["http://vllm:s3cr3t-one@gpu1:8000/v1", ("https://u:s3cr3t-two@gpu2/v1",)],
        headers={"Authorization": "Basic s3cr3t-three", "nested": {"api_key": "s3cr3t-four"}},
        deeper=[{"note": f"Bearer {secret}"}],
        settings=Settings(llm_api_key="s3cr3t-five", database_url="postgresql://a:s3cr3t-six@h/db"),
        url=httpx.URL("http://u:s3cr3t-seven@gpu3:8000/v1"),
        count=3,
    )
    output = stream.getvalue()
    assert "s3cr3t" not in output
    assert secret not in output
    line = msgspec.json.decode(output.splitlines()[-1])
    assert line["llm_urls"] == [
        "http://vllm:[redacted]@gpu1:8000/v1",
        ["https://u:[redacted]@gpu2/v1"],
    ]
    assert line["count"] == 3
    assert line["settings"]["llm_api_key"] == "[redacted]"


def test_a_value_that_contains_itself_is_cut_not_recursed_forever() -> None:
    stream, log = capture_json()
    loop: list[object] = []
    loop.append(loop)
    log.info("odd", value=loop)  # type: ignore[attr-defined]
    assert "[too deep]" in stream.getvalue()


def test_a_line_of_many_fields_is_the_line_info_writes() -> None:
    from functions.core.logging import log_fields

    stream, log = capture_json(request_id="req-9")
    secret = "sb-" + "L0ngK3y" * 5
    fields = {
        "path": f"/v1/x/{secret}",
        "key_prefix": "sb-abcdefghi",  # a key's display prefix: not a secret
        "upstream": "http://u:hunter2@gpu:8000/v1",
        "api_key": "plain",
        "status": 201,
    }
    log_fields(log, "request", dict(fields))
    log.info("request", **fields)  # type: ignore[attr-defined]
    structlog.contextvars.clear_contextvars()
    fast, slow = (msgspec.json.decode(line) for line in stream.getvalue().splitlines()[-2:])
    assert fast.pop("timestamp")[:11] == slow.pop("timestamp")[:11]
    assert fast == slow
    assert fast["request_id"] == "req-9"
    assert fast["key_prefix"] == "sb-abcdefghi"
    assert secret not in fast["path"]
    assert "hunter2" not in fast["upstream"]
    assert fast["api_key"] == "[redacted]"


def test_timestamps_are_rfc3339_utc_with_microseconds() -> None:
    from datetime import UTC, datetime

    stream, log = capture_json()
    before = datetime.now(UTC)
    log.info("tick")  # type: ignore[attr-defined]
    stamp = msgspec.json.decode(stream.getvalue().splitlines()[-1])["timestamp"]
    assert stamp.endswith("Z")
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((parsed - before).total_seconds()) < 60
    assert len(stamp) == len("2026-12-08T01:20:00.123456Z")
