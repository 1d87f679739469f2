"""Contract §5: the vllm:* Prometheus series, their types, labels and movement."""

from __future__ import annotations

import re

import httpx

from tests.simulator.conftest import MODEL, OTHER_MODEL, TOKENS, chat_body
from tests.support.simulator import SimulatorProcess

SAMPLE = re.compile(r"^([a-zA-Z0-9_:]+)\{([^}]*)\} (\S+)$")


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            labels = frozenset(
                (key, value.strip('"'))
                for key, value in (pair.split("=", 1) for pair in match.group(2).split(","))
            )
            samples[(match.group(1), labels)] = float(match.group(3))
    return types, samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    model: str = MODEL,
    **labels: str,
) -> float:
    key = frozenset({"model_name": model, "engine": "0", **labels}.items())
    return samples[(name, key)]


async def scrape(client: httpx.AsyncClient) -> tuple[dict[str, str], dict]:  # type: ignore[type-arg]
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


async def test_series_names_types_and_labels(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    types, samples = await scrape(client)
    assert types["vllm:num_requests_running"] == "gauge"
    assert types["vllm:num_requests_waiting"] == "gauge"
    assert types["vllm:kv_cache_usage_perc"] == "gauge"
    assert types["vllm:prompt_tokens"] == "counter"
    assert types["vllm:generation_tokens"] == "counter"
    assert types["vllm:request_success"] == "counter"
    assert types["vllm:time_to_first_token_seconds"] == "histogram"
    assert types["vllm:e2e_request_latency_seconds"] == "histogram"
    for model in (MODEL, OTHER_MODEL):
        assert value(samples, "vllm:num_requests_running", model) == 0
        assert value(samples, "vllm:num_requests_waiting", model) == 0
        assert 0 <= value(samples, "vllm:kv_cache_usage_perc", model) <= 1
        assert value(samples, "vllm:prompt_tokens_total", model) == 0
        assert value(samples, "vllm:generation_tokens_total", model) == 0
        for reason in ("stop", "length", "abort", "error"):
            assert value(samples, "vllm:request_success_total", model, finished_reason=reason) == 0
        assert value(samples, "vllm:time_to_first_token_seconds_bucket", model, le="+Inf") == 0
        assert value(samples, "vllm:e2e_request_latency_seconds_count", model) == 0
    for (name, labels), _ in samples.items():
        assert name.startswith("vllm:")
        assert {"model_name", "engine"} <= {key for key, _ in labels}


async def test_counters_and_histograms_move(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    done = (await client.post("/v1/chat/completions", json=chat_body())).json()
    await client.post("/v1/chat/completions", json=chat_body(max_tokens=2, stream=True))
    await client.post("/v1/chat/completions", json=chat_body(model=OTHER_MODEL))
    _, samples = await scrape(client)
    assert value(samples, "vllm:request_success_total", finished_reason="stop") == 1
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 1
    assert value(samples, "vllm:request_success_total", OTHER_MODEL, finished_reason="stop") == 1
    assert value(samples, "vllm:generation_tokens_total") == TOKENS + 2
    assert value(samples, "vllm:prompt_tokens_total") == 2 * done["usage"]["prompt_tokens"]
    assert value(samples, "vllm:time_to_first_token_seconds_count") == 2
    assert value(samples, "vllm:e2e_request_latency_seconds_count") == 2
    assert value(samples, "vllm:e2e_request_latency_seconds_bucket", le="+Inf") == 2
    # Buckets are cumulative.
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "vllm:time_to_first_token_seconds_bucket" and dict(labels)["model_name"] == MODEL
    )
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == 2


async def test_failed_requests_count_as_error(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    await client.post("/v1/chat/completions", json=chat_body(), headers={"X-Sim-Fault": "500"})
    await client.post(
        "/v1/chat/completions", json=chat_body(stream=True), headers={"X-Sim-Fault": "cut:2"}
    )
    _, samples = await scrape(client)
    assert value(samples, "vllm:request_success_total", finished_reason="error") == 2


async def test_validation_errors_do_not_count(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    await client.post("/v1/chat/completions", json=chat_body(temperature=-1))
    _, samples = await scrape(client)
    assert (
        sum(count for (name, _), count in samples.items() if name == "vllm:request_success_total")
        == 0
    )
