"""What the rendered objects promise: every function scales, drains and is disrupted on its
own, runs hardened, and reads only real settings; the migration is a hook; the flows run
as the CLI and Prefect expect; the network is closed but for what each pod needs."""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from functions.cli import main as switchboard
from functions.core.settings import Settings, load_settings
from functions.serve import FUNCTIONS, server_config
from tests.deploy.conftest import (
    VALUE_SETS,
    Objects,
    component,
    of_kind,
    values_of,
)

# The port vLLM's server and production-stack's router listen on in their pods.
VLLM_POD_PORT = 8000
SETTINGS = {f"SWITCHBOARD_{name.upper()}" for name in Settings.__struct_fields__}


def pod_specs(objects: Objects) -> dict[str, dict[str, Any]]:
    """Every pod template of the release, by its object's kind and name."""
    return {
        f"{each['kind']}/{each['metadata']['name']}": each["spec"]["template"]
        for each in objects
        if each["kind"] in {"Deployment", "Job"}
    }


def container_settings(container: dict[str, Any]) -> Settings:
    """The settings a container's process would load from its environment (a Secret's
    value stands in as a placeholder URL)."""
    env = {
        each["name"]: each.get("value", "postgresql://secret@db.example/switchboard")
        for each in container.get("env", [])
        if each["name"].startswith("SWITCHBOARD_")
    }
    return load_settings(env, dotenv=None)


def function_deployment(objects: Objects, function: str) -> dict[str, Any]:
    [found] = [
        each for each in of_kind(objects, "Deployment").values() if component(each) == function
    ]
    return found


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_each_function_has_probes_limits_a_drain_and_its_own_budget(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    values = values_of(name)
    shutdown = values["shutdown"]
    autoscaled = values["functionDefaults"]["autoscaling"]["enabled"]
    budgets = of_kind(objects, "PodDisruptionBudget")
    scalers = of_kind(objects, "HorizontalPodAutoscaler")
    deployments = [d for d in of_kind(objects, "Deployment").values() if component(d) in FUNCTIONS]
    assert sorted(component(d) or "" for d in deployments) == sorted(FUNCTIONS)
    for function in FUNCTIONS:
        deployment = function_deployment(objects, function)
        pod = deployment["spec"]["template"]
        [container] = pod["spec"]["containers"]
        command = container["command"]
        assert command[:4] == ["switchboard", "serve", "--function", function]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}
        # The drain: the preStop pause, then the graceful shutdown serve configures from
        # the pod's own settings (read by the real loader), fit the pod's grace.
        pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        settings = container_settings(container)
        assert settings.shutdown_grace_s == shutdown["graceSeconds"]
        assert settings.outcome_retry_s == shutdown["outcomeRetrySeconds"]
        server = server_config(settings, function=function, workers=int(command[-1]))
        assert pod["spec"]["terminationGracePeriodSeconds"] >= (
            pause + server.timeout_graceful_shutdown
        )
        # Each function's own budget and autoscaler select it and nothing else.
        labels = pod["metadata"]["labels"]
        spread = pod["spec"].get("topologySpreadConstraints", [])
        if values["functionDefaults"]["spreadAcrossNodes"]:
            keys = {
                each["topologyKey"]
                for each in spread
                if each["labelSelector"]["matchLabels"].items() <= labels.items()
                and each["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == function
            }
            assert "kubernetes.io/hostname" in keys
        [budget] = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == function
        assert "maxUnavailable" in budget["spec"] or "minAvailable" in budget["spec"]
        targets = [
            s
            for s in scalers.values()
            if s["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        ]
        if autoscaled:
            [scaler] = targets
            assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
            metrics = {m["type"]: m for m in scaler["spec"]["metrics"]}
            assert metrics["Resource"]["resource"]["name"] == "cpu"
            if values["functionDefaults"]["autoscaling"]["inflight"]["enabled"]:
                metric = metrics["Pods"]["pods"]["metric"]["name"]
                assert metric == "switchboard_http_requests_in_flight"
        else:
            assert targets == []
            assert deployment["spec"]["replicas"] >= 1


def test_the_in_flight_metric_the_autoscaler_reads_is_one_the_functions_serve() -> None:
    from functions.core import metrics

    inflight = values_of("default")["functionDefaults"]["autoscaling"]["inflight"]
    assert inflight["metricName"] == metrics.HTTP_IN_FLIGHT._name


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_runs_hardened_and_reads_only_real_settings(
    rendered: dict[str, Objects], name: str
) -> None:
    for where, pod in pod_specs(rendered[name]).items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        is_worker = pod["metadata"]["labels"]["app.kubernetes.io/component"] == "flows-worker"
        assert spec["automountServiceAccountToken"] is is_worker, where
        mounted = {volume["name"] for volume in spec.get("volumes", [])}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {m["name"] for m in container.get("volumeMounts", [])} <= mounted
            names = {each["name"] for each in container.get("env", [])}
            unknown = {n for n in names if n.startswith("SWITCHBOARD_")} - SETTINGS
            assert unknown == set(), where
            if "SWITCHBOARD_DATABASE_URL" in names:
                container_settings(container)  # every value one the settings loader takes
            if "SWITCHBOARD_OUTCOME_JOURNAL_DIR" in names:
                journal = next(
                    each["value"]
                    for each in container["env"]
                    if each["name"] == "SWITCHBOARD_OUTCOME_JOURNAL_DIR"
                )
                paths = {m["mountPath"] for m in container["volumeMounts"]}
                assert journal in paths, where  # writable, on a read-only root


def test_the_migration_is_a_hook_before_install_and_upgrade(rendered: dict[str, Objects]) -> None:
    for objects in rendered.values():
        [job] = [j for j in of_kind(objects, "Job").values() if component(j) == "migrate"]
        hooks = job["metadata"]["annotations"]
        assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert "before-hook-creation" in hooks["helm.sh/hook-delete-policy"]
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["switchboard", "db", "migrate"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    help_text = CliRunner().invoke(switchboard, ["db", "migrate", "--help"])
    assert help_text.exit_code == 0, help_text.output


def test_the_throwaway_databases_come_before_the_migration_and_only_when_asked(
    rendered: dict[str, Objects],
) -> None:
    for name, objects in rendered.items():
        throwaway = [
            each
            for each in objects
            if each["metadata"].get("labels", {}).get("switchboard.dev/throwaway") == "true"
        ]
        if name != "throwaway-databases":
            assert throwaway == [], name
            continue
        weights = {
            each["kind"]: int(each["metadata"]["annotations"]["helm.sh/hook-weight"])
            for each in throwaway
        }
        [migrate] = [j for j in of_kind(objects, "Job").values() if component(j) == "migrate"]
        assert max(weights.values()) < int(
            migrate["metadata"]["annotations"]["helm.sh/hook-weight"]
        )
        [secret] = [each for each in throwaway if each["kind"] == "Secret"]
        assert secret["metadata"]["name"] == values_of(name)["database"]["existingSecret"]
        host = urlsplit(secret["stringData"]["url"]).hostname
        assert host in of_kind(objects, "Service")


def test_flows_served_by_one_pod_or_run_as_jobs_of_a_work_pool(
    rendered: dict[str, Objects],
) -> None:
    served = of_kind(rendered["default"], "Deployment")
    [flows] = [d for d in served.values() if component(d) == "flows"]
    assert flows["spec"]["replicas"] == 1  # two would run every schedule twice
    assert flows["spec"]["strategy"]["type"] == "Recreate"
    assert flows["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "switchboard",
        "flows",
        "serve",
    ]

    objects = rendered["vllm-production-stack"]
    pool = values_of("vllm-production-stack")["flows"]["workPool"]["name"]
    [worker] = [
        d for d in of_kind(objects, "Deployment").values() if component(d) == "flows-worker"
    ]
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == pool
    assert command[command.index("--type") + 1] == "kubernetes"
    [deploy] = [j for j in of_kind(objects, "Job").values() if component(j) == "flows-deploy"]
    assert set(deploy["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {
        "post-install",
        "post-upgrade",
    }
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    script = container["command"][-1]
    assert {"name": "POOL", "value": pool} in container["env"]
    assert "switchboard flows deploy --pool" in " ".join(shlex.split(script))
    assert "prefect work-pool create" in " ".join(shlex.split(script))
    # The worker's Role lets it make the runs' Jobs and nothing cluster-wide.
    [role] = of_kind(objects, "Role").values()
    jobs = next(rule for rule in role["rules"] if "jobs" in rule["resources"])
    assert "create" in jobs["verbs"]
    assert of_kind(objects, "ClusterRole") == {}
    # The command the hook runs exists, with the option it passes.
    from flows.cli import flows as flows_group

    help_text = CliRunner().invoke(flows_group, ["deploy", "--help"])
    assert help_text.exit_code == 0, help_text.output
    assert "--pool" in help_text.output


def peers_allow(rules: list[dict[str, Any]], port: int) -> bool:
    return any(any(each.get("port") == port for each in rule.get("ports", [])) for rule in rules)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_network_is_closed_but_for_what_each_pod_needs(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    values = values_of(name)
    policies = of_kind(objects, "NetworkPolicy")
    [default] = [p for p in policies.values() if p["metadata"]["name"].endswith("-default")]
    assert set(default["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in default["spec"]  # nothing comes in unless another policy says so
    selector = default["spec"]["podSelector"]["matchLabels"]
    for where, pod in pod_specs(objects).items():
        assert selector.items() <= pod["metadata"]["labels"].items(), where
    egress = default["spec"]["egress"]
    assert peers_allow(egress, 53)
    assert peers_allow(egress, 5432)
    # A policy sees the pod's port, after a Service's translation: a router Service's 80
    # reaches production-stack's router (and vLLM) on 8000, their pods' port.
    for url in values["llm"]["urls"]:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        assert peers_allow(egress, port) or peers_allow(egress, VLLM_POD_PORT), url
    if values["flows"]["mode"] != "none":
        assert peers_allow(egress, urlsplit(values["flows"]["prefectApiUrl"]).port or 80)
    # The functions: only the Ingress controller (the one way to the admin routes) and the
    # metrics scraper may connect.
    [functions] = [p for p in policies.values() if p["metadata"]["name"].endswith("-functions")]
    allowed = [peer for rule in functions["spec"]["ingress"] for peer in rule["from"]]
    expected = values["networkPolicy"]["ingressFrom"] + (
        values["networkPolicy"]["metricsFrom"] or []
    )
    assert allowed == expected
    for function in FUNCTIONS:
        labels = function_deployment(objects, function)["spec"]["template"]["metadata"]["labels"]
        assert functions["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_the_prefect_settings_the_flows_pods_set_are_prefects(rendered: dict[str, Objects]) -> None:
    """Every PREFECT_* variable of the flows' pods names a setting this Prefect has (an
    unknown one would be ignored without a word)."""
    import prefect.settings

    names = {
        each["name"]
        for objects in rendered.values()
        for pod in pod_specs(objects).values()
        for container in pod["spec"]["containers"]
        for each in container.get("env", [])
        if each["name"].startswith("PREFECT_")
    }
    assert {
        "PREFECT_API_URL",
        "PREFECT_RUNNER_SERVER_ENABLE",
        "PREFECT_WORKER_WEBSERVER_PORT",
    } <= names
    unknown = {name for name in names if not hasattr(prefect.settings, name)}
    assert unknown == set()
