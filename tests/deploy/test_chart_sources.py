"""What the chart takes from the Compose stack's files stays theirs: the routes are the
Caddyfile's, the alerts are monitoring/'s rules (and pass their promtool unit tests as
rendered), the dashboards are monitoring/'s JSON, and Prometheus scrapes the functions
under the job name the alerts expect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from functions.serve import FUNCTIONS
from tests.deploy.conftest import CHART, Objects, component, of_kind, tool
from tests.ops.routes import proxy_routes
from tests.ops.tools import MONITORING, debian_tool, run
from tests.support.process import REPO_ROOT

RULES = MONITORING / "prometheus" / "rules"
DASHBOARDS = MONITORING / "grafana" / "dashboards"


def everything(rendered: dict[str, Objects]) -> Objects:
    return [each for objects in rendered.values() for each in objects]


def function_of_service(objects: Objects) -> dict[str, str]:
    return {
        name: component(service) or ""
        for name, service in of_kind(objects, "Service").items()
        if component(service) in FUNCTIONS
    }


def caddy_patterns(kind: str, path: str) -> set[str]:
    """The Caddy path patterns a route of this kind stands for: a prefix by whole path
    segments is Caddy's ``P P/*``; an exact path is ``P``."""
    return {path, f"{path}/*"} if kind in {"Prefix", "PathPrefix"} else {path}


def test_the_chart_links_to_monitoring_rather_than_copying_it() -> None:
    files = CHART / "files"
    assert (files / "prometheus-rules").resolve() == RULES.resolve()
    assert (files / "grafana-dashboards").resolve() == DASHBOARDS.resolve()
    assert (files / "prometheus-rules").is_symlink()
    assert (files / "grafana-dashboards").is_symlink()


def test_the_ingress_routes_every_path_as_the_caddyfile_does(rendered: dict[str, Objects]) -> None:
    caddy = proxy_routes()
    seen = 0
    for objects in rendered.values():
        services = function_of_service(objects)
        for ingress in of_kind(objects, "Ingress").values():
            routes: dict[str, set[str]] = {}
            [rule] = ingress["spec"]["rules"]
            for path in rule["http"]["paths"]:
                function = services[path["backend"]["service"]["name"]]
                routes.setdefault(function, set()).update(
                    caddy_patterns(path["pathType"], path["path"])
                )
            assert routes == caddy
            seen += 1
    assert seen


def test_the_http_route_routes_every_path_as_the_caddyfile_does(
    rendered: dict[str, Objects],
) -> None:
    caddy = proxy_routes()
    seen = 0
    for objects in rendered.values():
        services = function_of_service(objects)
        for route in of_kind(objects, "HTTPRoute").values():
            routes: dict[str, set[str]] = {}
            for rule in route["spec"]["rules"]:
                [match] = rule["matches"]
                [backend] = rule["backendRefs"]
                routes.setdefault(services[backend["name"]], set()).update(
                    caddy_patterns(match["path"]["type"], match["path"]["value"])
                )
            assert routes == caddy
            seen += 1
    assert seen


def rendered_rules(rendered: dict[str, Objects]) -> list[dict[str, Any]]:
    rules = [each for each in everything(rendered) if each["kind"] == "PrometheusRule"]
    assert rules
    return rules


def test_the_prometheus_rule_carries_monitorings_rules_unchanged(
    rendered: dict[str, Objects],
) -> None:
    groups = [
        group
        for path in sorted(RULES.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    for rule in rendered_rules(rendered):
        assert rule["spec"]["groups"] == groups


def test_the_rendered_alerts_pass_monitorings_promtool_unit_tests(
    rendered: dict[str, Objects], tmp_path: Path
) -> None:
    """promtool's unit tests for the alerts, run against the rules as the chart renders
    them (each test file pointed at the rendered rules instead of monitoring/'s)."""
    promtool = debian_tool("promtool", "prometheus")
    rules = tmp_path / "rendered-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rendered_rules(rendered)[0]["spec"]["groups"]}))
    assert run([promtool, "check", "rules", str(rules)]).returncode == 0
    tests = sorted((MONITORING / "prometheus" / "tests").glob("*.yml"))
    assert tests
    for path in tests:
        case = yaml.safe_load(path.read_text())
        case["rule_files"] = [str(rules)]
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(case, sort_keys=False))
        result = run([promtool, "test", "rules", str(copy)])
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_monitor_scrapes_every_function_as_the_alerts_expect(
    rendered: dict[str, Objects],
) -> None:
    seen = 0
    for objects in rendered.values():
        for monitor in of_kind(objects, "ServiceMonitor").values():
            selector = monitor["spec"]["selector"]["matchLabels"]
            services = function_of_service(objects)
            for name in services:
                service = of_kind(objects, "Service")[name]
                assert selector.items() <= service["metadata"]["labels"].items()
                ports = {port["name"] for port in service["spec"]["ports"]}
                assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
                # The job label: the alerts and dashboards say job="switchboard".
                assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "switchboard"
            [endpoint] = monitor["spec"]["endpoints"]
            assert endpoint["path"] == "/metrics"
            seen += 1
    assert seen
    assert 'job=~"switchboard|' in (RULES / "switchboard.yml").read_text()


def test_the_dashboards_are_monitorings_json_for_the_grafana_sidecar(
    rendered: dict[str, Objects],
) -> None:
    files = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert files
    seen = 0
    for objects in rendered.values():
        maps = [
            each
            for each in of_kind(objects, "ConfigMap").values()
            if each["metadata"]["labels"].get("grafana_dashboard") == "1"
        ]
        if not maps:
            continue
        data = {key: value for each in maps for key, value in each["data"].items()}
        assert data.keys() == files.keys()
        for name, text in data.items():
            assert json.loads(text) == json.loads(files[name])
        seen += 1
    assert seen


def test_a_packaged_chart_carries_monitorings_files_not_links(tmp_path: Path) -> None:
    """``helm package`` follows the links: the archive holds the rules and dashboards
    themselves, and none of the examples (.helmignore)."""
    files = tool("package", str(tmp_path))
    for source, inside in ((RULES, "prometheus-rules"), (DASHBOARDS, "grafana-dashboards")):
        for path in source.iterdir():
            assert files[f"switchboard/files/{inside}/{path.name}"] == path.read_text()
    assert not [name for name in files if "/examples/" in name]
    assert "switchboard/values.yaml" in files


def test_the_kubernetes_page_names_every_value_and_example() -> None:
    page = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    table = page.split("## Values", 1)[1]
    missing = [key for key in values if f"`{key}" not in table]
    assert missing == []
    for example in (CHART / "examples").glob("*.yaml"):
        assert f"`{example.name}`" in page or f"examples/{example.name}" in page, example.name
