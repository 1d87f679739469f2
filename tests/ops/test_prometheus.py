"""Prometheus's configuration and alerts, checked by promtool (Debian's `prometheus`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from functions.serve import FUNCTIONS
from tests.ops.tools import MONITORING, compose_config, debian_tool, env_file, run

PROMETHEUS = MONITORING / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_tool("promtool", "prometheus")


def test_promtool_accepts_the_config(promtool: str) -> None:
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules(promtool: str) -> None:
    rules = sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml"))
    assert rules
    result = run([promtool, "check", "rules", *rules])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_unit_tests_pass(promtool: str) -> None:
    tests = sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.yml"))
    result = run([promtool, "test", "rules", *tests])
    assert result.returncode == 0, result.stdout + result.stderr


def alerts() -> set[str]:
    names = set()
    for path in (PROMETHEUS / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


def test_every_alert_has_a_unit_test_that_makes_it_fire() -> None:
    fired: set[str] = set()
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert alerts() - fired == set()
    assert len(alerts()) >= 10


def test_every_alert_is_explained_in_the_operations_page() -> None:
    page = (PROMETHEUS.parents[1] / "docs/operations.md").read_text()
    for name in alerts():
        assert f"`{name}`" in page, name


def scrape_jobs() -> dict[str, Any]:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_function_and_the_model_server(tmp_path: Path) -> None:
    services = compose_config(env_file(tmp_path), "sim")["services"]
    jobs = scrape_jobs()
    functions = jobs["switchboard"]["dns_sd_configs"][0]
    assert sorted(functions["names"]) == sorted(FUNCTIONS)
    assert str(functions["port"]) == services["chat"]["environment"]["SWITCHBOARD_PORT"]
    llm = jobs["vllm"]["dns_sd_configs"][0]
    assert llm["names"] == ["llm"]
    assert f"--port={llm['port']}" in services["sim"]["command"]
    assert jobs["pushgateway"]["honor_labels"] is True
    for job in ("pushgateway", "prefect", "loki", "alloy"):
        host = jobs[job]["static_configs"][0]["targets"][0].split(":")[0]
        assert host in services, job
