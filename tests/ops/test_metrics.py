"""The metrics: every query names a real series; labels stay bounded; several workers add up.

"Real" is what exporters actually served in this run, not a list typed here: Switchboard's
functions scraped after the traffic of ``conftest.traffic``, the Pushgateway after flow
runs pushed to it, and vLLM's series (the simulator scraped, plus the names of vLLM's own
/metrics in ``monitoring/prometheus/vllm-metrics.txt``, which the simulator must agree with).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from functions.serve import FUNCTIONS
from tests.ops.conftest import FlowSamples, Stack, scrape
from tests.ops.routes import function_routes
from tests.ops.tools import MONITORING

# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def vllm_contract() -> set[str]:
    lines = (MONITORING / "prometheus" / "vllm-metrics.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def exported_labels(texts: list[str]) -> dict[str, set[str]]:
    """Every series name served, with the label names it carries."""
    found: dict[str, set[str]] = {}
    for text in texts:
        for name, labels, _ in samples(text):
            found.setdefault(name, set()).update(labels)
    return found


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert rule and every Prometheus query of every dashboard."""
    for path in sorted((MONITORING / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]
    for path in sorted((MONITORING / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            if panel.get("datasource", {}).get("type") != "prometheus":
                continue
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", str(query))
            if variable.get("type") == "query":
                assert match, f"{path.name}: variable {variable['name']}: {query}"
                yield f"{path.name}: ${variable['name']}", match[1]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values PromQL accepts."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\w+", ".*", expr)


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector in ``expr``."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name for m in node.matchers.matchers} - {"__name__"}
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), ""
            )
            found.append((name, matchers))

    promql_parser.walk(promql_parser.parse(as_promql(expr)), pre_visit=visit)
    return found


def test_every_query_parses() -> None:
    parsed = 0
    for where, expr in queries():
        try:
            promql_parser.parse(as_promql(expr))
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}\n{expr}")
        parsed += 1
    assert parsed > 40


def test_the_simulator_exposes_only_vllm_series(sim_metrics: str) -> None:
    contract = vllm_contract()
    names = {name for name, _, _ in samples(sim_metrics)}
    assert names, "the simulator served no series"
    for name in names:
        base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        assert name in contract or base in contract, name


def test_every_query_names_only_series_that_are_exported(
    scraped: dict[str, str], flow_samples: FlowSamples, sim_metrics: str
) -> None:
    switchboard = exported_labels(list(scraped.values()))
    flows: dict[str, set[str]] = {}
    for name, labels in flow_samples:
        flows.setdefault(name, set()).update(k for k, _ in labels)
    vllm = exported_labels([sim_metrics])
    contract = vllm_contract()
    used: set[str] = set()
    for where, expr in queries():
        for name, matched in selectors(expr):
            used.add(name)
            base = next(
                (name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name
            )
            if name in switchboard or name in flows:
                carried = switchboard[name] if name in switchboard else flows[name]
                # Prometheus adds job and instance (and service, for the functions).
                unknown = matched - carried - {"job", "instance", "service"}
                assert not unknown, f"{where}: {name} has no label {unknown}"
            elif name.startswith("vllm:"):
                assert name in vllm or name in contract or base in contract, f"{where}: {name}"
            else:
                assert name in PROMETHEUS_OWN, f"{where}: {name} is exported by nothing"
    # Every family the issue asks for is on a dashboard or in an alert.
    for needed in (
        "switchboard_http_requests_total",
        "switchboard_http_request_duration_seconds_bucket",
        "switchboard_http_requests_in_flight",
        "switchboard_llm_requests_total",
        "switchboard_llm_errors_total",
        "switchboard_llm_request_duration_seconds_bucket",
        "switchboard_llm_time_to_first_token_seconds_bucket",
        "switchboard_llm_inter_token_latency_seconds_bucket",
        "switchboard_llm_tokens_total",
        "switchboard_llm_upstream_health",
        "switchboard_llm_upstream_in_flight",
        "switchboard_chat_replies_total",
        "switchboard_gateway_overhead_seconds_bucket",
        "switchboard_flow_last_run_timestamp_seconds",
        "switchboard_flow_last_run_items",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ):
        assert needed in used, needed


UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)


def test_no_label_carries_a_key_conversation_or_message(
    traffic: Stack, scraped: dict[str, str]
) -> None:
    # Requests on paths no route knows: the label is "unmatched", never the path.
    chat = traffic.functions["chat"]
    for _ in range(3):
        httpx.get(f"{chat.root_url}/v1/nowhere/{time.time_ns()}", timeout=5)
    texts = [*scraped.values(), scrape(chat)]
    forbidden = [*traffic.ids, *traffic.secrets, *(s[:12] for s in traffic.secrets)]
    assert len(traffic.ids) >= 5
    routes = {"unmatched"}
    for function in FUNCTIONS:
        routes |= function_routes(function) | {"/healthz", "/readyz", "/metrics"}
    for text in texts:
        for name, labels, _ in samples(text):
            for label, value in labels.items():
                assert not UUID.search(value), (name, label, value)
                assert not any(secret in value for secret in forbidden), (name, label, value)
                assert not label.endswith("_id"), (name, label)
            if "route" in labels:
                assert labels["route"] in routes or labels["route"].startswith("/schema"), labels
            if "model" in labels:
                assert labels["model"] in {traffic.model, traffic.embedding_model, "unknown"}, (
                    labels
                )
            if "config" in labels:
                assert labels["config"] in {"ops", "ghost", "none"}, labels
            if "upstream" in labels:
                upstreams = {
                    traffic.env["SWITCHBOARD_LLM_URLS"],
                    traffic.env["SWITCHBOARD_EMBEDDING_URLS"],
                    "none",
                }
                assert labels["upstream"] in upstreams, labels


def totals(text: str, name: str, **match: str) -> float:
    return sum(
        value
        for sample, labels, value in samples(text)
        if sample == name and all(labels.get(k) == v for k, v in match.items())
    )


def workers_that_sent(directory: Path) -> set[str]:
    """The pids whose counter files count a reply (each worker writes its own file)."""
    pids = set()
    for path in directory.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
            if json.loads(key)[0] == "switchboard_llm_requests" and value > 0:
                pids.add(path.stem.rsplit("_", 1)[1])
    return pids


def test_several_workers_add_up_whichever_answers(traffic: Stack) -> None:
    chat = traffic.functions["chat"]
    workers = Path(chat.env["PROMETHEUS_MULTIPROC_DIR"])
    headers = {"Authorization": f"Bearer {traffic.admin_secret}"}
    conversation = httpx.post(
        f"{chat.root_url}/v1/conversations", json={}, headers=headers, timeout=10
    ).json()
    # New connections until both workers have sent to the model.
    deadline = time.monotonic() + 30
    while len(workers_that_sent(workers)) < 2:
        assert time.monotonic() < deadline, "one worker took every connection"
        response = httpx.post(
            f"{chat.root_url}/v1/conversations/{conversation['id']}/messages",
            json={"content": "hello"},
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 201, response.text
    time.sleep(1.5)  # each worker copies its live metrics every second
    seen = set()
    for _ in range(10):
        text = scrape(chat)
        routed = totals(text, "switchboard_llm_upstream_requests_total")
        answered = totals(text, "switchboard_llm_requests_total") - totals(
            text, "switchboard_llm_requests_total", upstream="none"
        )
        assert routed == answered, text
        assert totals(text, "switchboard_llm_upstream_in_flight") == 0
        llm = traffic.env["SWITCHBOARD_LLM_URLS"]
        state = totals(text, "switchboard_llm_upstream_state", state="up", upstream=llm)
        assert state == 2  # both workers route to the one chat upstream
        seen.add((routed, totals(text, "switchboard_http_requests_total")))
    assert len({routed for routed, _ in seen}) == 1, seen
