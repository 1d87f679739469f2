"""Switchboard's Grafana dashboards, as code: ``python monitoring/grafana/generate.py``.

Built with Grafana's own typed builders (grafana-foundation-sdk, the release for Grafana
11.6, the version compose runs), so a panel or query field that Grafana does not know is a
Python error here, not a silently broken dashboard. The JSON under ``dashboards/`` is this
script's output, committed; ``tests/ops`` checks it is up to date, that every query parses
and that every metric it names is one Switchboard, a flow or vLLM exports.

Datasources are referenced by the UIDs provisioning gives them (``prometheus``, ``loki``);
the functions whose logs the panels read are ``functions.serve.FUNCTIONS``, each a compose
service of that name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from grafana_foundation_sdk.builders import (
    logs,
    loki,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LogsSortOrder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
)

from functions.serve import FUNCTIONS as SERVED_FUNCTIONS

if TYPE_CHECKING:
    from grafana_foundation_sdk.models import dashboard as dashboard_model

OUT = Path(__file__).resolve().parent / "dashboards"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
LOKI = DataSourceRef(type_val="loki", uid="loki")
RATE = "$__rate_interval"
# Every function's compose service (docker-compose.yml names each after its function).
FUNCTIONS = f'service=~"{"|".join(SERVED_FUNCTIONS)}"'


def prom(expr: str, legend: str = "__auto") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def series(
    title: str, *queries: prometheus.Dataquery, unit: str = "short", width: int = 12
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).datasource(PROMETHEUS).unit(unit).span(width)
    for query in queries:
        panel = panel.with_target(query)
    return panel.height(8).fill_opacity(10)


def single(title: str, query: prometheus.Dataquery, unit: str = "short") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .with_target(query.instant())
        .unit(unit)
        .span(6)
        .height(4)
    )


def quantiles(metric: str, by: str, selector: str = "") -> list[prometheus.Dataquery]:
    """p50 and p95 of a histogram, per ``by``."""
    inner = f"sum by (le, {by}) (rate({metric}_bucket{selector}[{RATE}]))"
    return [
        prom(f"histogram_quantile({q}, {inner})", f"p{int(q * 100)} {{{{{by}}}}}")
        for q in (0.5, 0.95)
    ]


def log_panel(title: str, expr: str, height: int = 10) -> logs.Panel:
    return (
        logs.Panel()
        .title(title)
        .datasource(LOKI)
        .with_target(loki.Dataquery().expr(expr))
        .span(24)
        .height(height)
        .show_time(True)
        .wrap_log_message(True)
        .sort_order(LogsSortOrder.DESCENDING)
        .enable_log_details(True)
    )


def dashboard(uid: str, title: str, description: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["switchboard"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-3h", "now")
        .refresh("30s")
        .timezone("browser")
    )


def gateway_overview() -> Dashboard:
    http = "switchboard_http_requests_total"
    return (
        dashboard(
            "switchboard-gateway",
            "Switchboard / Gateway overview",
            "Traffic, errors, latency and the gateway's own overhead, per function; "
            "upstream health as the health-check flow recorded it; recent warnings.",
        )
        .with_row(Row("At a glance"))
        .with_panel(single("Requests/s", prom(f"sum(rate({http}[{RATE}]))"), "reqps"))
        .with_panel(
            single(
                "5xx ratio",
                prom(f'sum(rate({http}{{status=~"5.."}}[{RATE}])) / sum(rate({http}[{RATE}]))'),
                "percentunit",
            )
        )
        .with_panel(
            single(
                "Overhead p95",
                prom(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(switchboard_gateway_overhead_seconds_bucket[{RATE}])))"
                ),
                "s",
            )
        )
        .with_panel(single("In flight", prom("sum(switchboard_http_requests_in_flight)"), "short"))
        .with_row(Row("HTTP"))
        .with_panel(
            series(
                "Requests by function and status",
                prom(
                    f"sum by (function, status) (rate({http}[{RATE}]))", "{{function}} {{status}}"
                ),
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Latency by route (p50, p95)",
                *quantiles("switchboard_http_request_duration_seconds", "route"),
                unit="s",
            )
        )
        .with_panel(
            series(
                "Gateway overhead: time outside the upstream call (p50, p95)",
                *quantiles("switchboard_gateway_overhead_seconds", "route"),
                unit="s",
            )
        )
        .with_panel(
            series(
                "In flight by function",
                prom("sum by (function) (switchboard_http_requests_in_flight)", "{{function}}"),
            )
        )
        .with_row(Row("Replies and upstreams"))
        .with_panel(
            series(
                "Replies stored by status",
                prom(
                    f"sum by (status) (rate(switchboard_chat_replies_total[{RATE}]))", "{{status}}"
                ),
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Upstream health (1 = latest recorded check says so)",
                prom(
                    "max by (upstream, status) (switchboard_llm_upstream_health) > 0",
                    "{{upstream}} {{status}}",
                ),
            )
        )
        .with_panel(
            series(
                "Requests in flight per upstream",
                prom("sum by (upstream) (switchboard_llm_upstream_in_flight)", "{{upstream}}"),
            )
        )
        .with_panel(
            series(
                "Workers not routing to an upstream, retries, refusals",
                prom(
                    'sum by (upstream, state) (switchboard_llm_upstream_state{state!="up"})',
                    "{{upstream}} {{state}}",
                ),
                prom(f"sum(rate(switchboard_llm_retries_total[{RATE}]))", "retries/s"),
                prom(f"sum(rate(switchboard_llm_overloaded_total[{RATE}]))", "overloaded/s"),
                prom(
                    "sum by (upstream) "
                    f"(increase(switchboard_llm_upstream_ejections_total[{RATE}]))",
                    "ejections {{upstream}}",
                ),
            )
        )
        .with_row(Row("Logs"))
        .with_panel(
            log_panel(
                "Warnings and errors (functions)",
                f'{{{FUNCTIONS}, level=~"warning|error|critical"}}',
            )
        )
        .with_panel(
            log_panel(
                "Requests (the canonical line of each)",
                f'{{{FUNCTIONS}}} | json | event="request"',
            )
        )
    )


def llm_performance() -> Dashboard:
    selector = '{model=~"$model"}'
    tokens = "switchboard_llm_tokens_total"
    return (
        dashboard(
            "switchboard-llm",
            "Switchboard / LLM performance",
            "What callers experience from the models through the gateway: latency, time to "
            "first token, inter-token latency, tokens per second by model and configuration, "
            "errors by code.",
        )
        .with_variable(
            QueryVariable("model")
            .label("Model")
            .datasource(PROMETHEUS)
            .query("label_values(switchboard_llm_requests_total, model)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_row(Row("Requests"))
        .with_panel(
            series(
                "Replies by model and outcome",
                prom(
                    "sum by (model, outcome) "
                    f"(rate(switchboard_llm_requests_total{selector}[{RATE}]))",
                    "{{model}} {{outcome}}",
                ),
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Errors by code",
                prom(
                    f"sum by (code) (rate(switchboard_llm_errors_total{selector}[{RATE}]))",
                    "{{code}}",
                ),
                unit="reqps",
            )
        )
        .with_row(Row("Latency"))
        .with_panel(
            series(
                "Whole reply (p50, p95)",
                *quantiles("switchboard_llm_request_duration_seconds", "model", selector),
                unit="s",
                width=8,
            )
        )
        .with_panel(
            series(
                "Time to first token (p50, p95)",
                *quantiles("switchboard_llm_time_to_first_token_seconds", "model", selector),
                unit="s",
                width=8,
            )
        )
        .with_panel(
            series(
                "Inter-token latency (p50, p95)",
                *quantiles("switchboard_llm_inter_token_latency_seconds", "model", selector),
                unit="s",
                width=8,
            )
        )
        .with_row(Row("Usage by key and configuration"))
        .with_panel(
            series(
                "Replies/s by key (SWITCHBOARD_METRICS_KEY_NAMES; the rest: other)",
                prom(
                    f"sum by (key, status) (rate(switchboard_key_replies_total[{RATE}]))",
                    "{{key}} {{status}}",
                ),
                unit="reqps",
                width=8,
            )
        )
        .with_panel(
            series(
                "Tokens/s by key",
                prom(
                    f"sum by (key, kind) (rate(switchboard_key_tokens_total[{RATE}]))",
                    "{{key}} {{kind}}",
                ),
                width=8,
            )
        )
        .with_panel(
            series(
                "Replies/s by configuration and status",
                prom(
                    f"sum by (config, status) (rate(switchboard_key_replies_total[{RATE}]))",
                    "{{config}} {{status}}",
                ),
                unit="reqps",
                width=8,
            )
        )
        .with_row(Row("Tokens"))
        .with_panel(
            series(
                "Output tokens/s by model and configuration",
                prom(
                    f'sum by (model, config) (rate({tokens}{{kind="completion", '
                    f'model=~"$model"}}[{RATE}]))',
                    "{{model}} / {{config}}",
                ),
            )
        )
        .with_panel(
            series(
                "Prompt tokens/s by model and configuration",
                prom(
                    f'sum by (model, config) (rate({tokens}{{kind="prompt", '
                    f'model=~"$model"}}[{RATE}]))',
                    "{{model}} / {{config}}",
                ),
            )
        )
    )


def vllm_engine() -> Dashboard:
    by = "model_name"
    return (
        dashboard(
            "switchboard-vllm",
            "Switchboard / vLLM engine",
            "vLLM's own view (its /metrics, vllm:*): queue, KV cache, engine latency, "
            "throughput, preemptions. Compare its TTFT with the gateway's to see the network "
            "and the gateway in between.",
        )
        .with_row(Row("Load"))
        .with_panel(
            series(
                "Requests running and waiting",
                prom(f"sum by ({by}) (vllm:num_requests_running)", "running {{model_name}}"),
                prom(f"sum by ({by}) (vllm:num_requests_waiting)", "waiting {{model_name}}"),
            )
        )
        .with_panel(
            series(
                "KV cache usage",
                prom(
                    f"max by (instance, {by}) (vllm:kv_cache_usage_perc)",
                    "{{instance}} {{model_name}}",
                ),
                unit="percentunit",
            )
        )
        .with_row(Row("Engine latency"))
        .with_panel(
            series(
                "Time to first token (p50, p95)",
                *quantiles("vllm:time_to_first_token_seconds", by),
                unit="s",
                width=8,
            )
        )
        .with_panel(
            series(
                "Inter-token latency (p50, p95)",
                *quantiles("vllm:inter_token_latency_seconds", by),
                unit="s",
                width=8,
            )
        )
        .with_panel(
            series(
                "Queue time (p50, p95)",
                *quantiles("vllm:request_queue_time_seconds", by),
                unit="s",
                width=8,
            )
        )
        .with_panel(
            series(
                "End to end (p50, p95)",
                *quantiles("vllm:e2e_request_latency_seconds", by),
                unit="s",
            )
        )
        .with_row(Row("Throughput"))
        .with_panel(
            series(
                "Tokens/s",
                prom(f"sum by ({by}) (rate(vllm:prompt_tokens_total[{RATE}]))", "prompt"),
                prom(f"sum by ({by}) (rate(vllm:generation_tokens_total[{RATE}]))", "generated"),
            )
        )
        .with_panel(
            series(
                "Finished requests by reason, preemptions",
                prom(
                    f"sum by (finished_reason) (rate(vllm:request_success_total[{RATE}]))",
                    "{{finished_reason}}",
                ),
                prom(f"sum(rate(vllm:num_preemptions_total[{RATE}]))", "preemptions"),
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Prefix cache hit ratio",
                prom(
                    f"sum by ({by}) (rate(vllm:prefix_cache_hits_total[{RATE}])) / "
                    f"sum by ({by}) (rate(vllm:prefix_cache_queries_total[{RATE}]))",
                    "{{model_name}}",
                ),
                unit="percentunit",
            )
        )
    )


def flows() -> Dashboard:
    last = "switchboard_flow_last_run_timestamp_seconds"
    return (
        dashboard(
            "switchboard-flows",
            "Switchboard / Flows",
            "The scheduled flows (health check, maintenance, export, evaluate): when each "
            "last succeeded and failed, how long and how much; the recorded health checks; "
            "the flows' logs.",
        )
        .with_row(Row("Runs"))
        .with_panel(
            series(
                "Time since the last successful run",
                prom(f'time() - max by (flow) ({last}{{result="success"}})', "{{flow}}"),
                unit="s",
            )
        )
        .with_panel(
            series(
                "Last run failed (1) or not (0)",
                prom(
                    f'(max by (flow) ({last}{{result="failure"}}) > bool on (flow) '
                    f'max by (flow) ({last}{{result="success"}}))',
                    "{{flow}}",
                ),
            )
        )
        .with_panel(
            series(
                "Duration of the last run",
                prom(
                    "max by (flow, result) (switchboard_flow_last_run_duration_seconds)",
                    "{{flow}} {{result}}",
                ),
                unit="s",
            )
        )
        .with_panel(
            series(
                "Items handled by the last successful run",
                prom(
                    'max by (flow, kind) (switchboard_flow_last_run_items{result="success"})',
                    "{{flow}} {{kind}}",
                ),
            )
        )
        .with_row(Row("Health checks"))
        .with_panel(
            series(
                "Age of each upstream's latest recorded check",
                prom(
                    "time() - max by (upstream) "
                    "(switchboard_llm_upstream_health_checked_timestamp_seconds)",
                    "{{upstream}}",
                ),
                unit="s",
                width=24,
            )
        )
        .with_row(Row("Logs"))
        .with_panel(log_panel("Flow logs", '{service="flows"}', height=12))
    )


DASHBOARDS = {
    "gateway-overview": gateway_overview,
    "llm-performance": llm_performance,
    "vllm-engine": vllm_engine,
    "flows": flows,
}


def numbered(board: Dashboard) -> dashboard_model.Dashboard:
    """The built dashboard with unique panel ids and each query's refId (A, B, ...)."""
    model = board.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
        for index, target in enumerate(getattr(panel, "targets", None) or []):
            target.ref_id = chr(ord("A") + index)
    return model


def render() -> dict[str, str]:
    """Every dashboard's JSON text, by file stem."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(numbered(build())) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        json.loads(text)  # fail here, not in Grafana
        (OUT / f"{name}.json").write_text(text)
        sys.stdout.write(f"wrote {OUT / name}.json\n")


if __name__ == "__main__":
    main()
