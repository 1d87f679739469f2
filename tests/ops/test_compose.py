"""docker-compose.yml, validated by the Compose binary for every profile, and read for the
properties the stack depends on (scaling, the GPU, the simulator swap, healthchecks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from functions.core.settings import load_settings
from functions.serve import FUNCTIONS
from tests.ops.tools import REPO, TEST_SECRETS, compose_binary, compose_config, env_file, run

# Services that may publish host ports: the API's one door and the operators' consoles.
PUBLISHED = {"proxy", "grafana", "prometheus", "prefect-server"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env_file(tmp_path_factory.mktemp("compose-env"))


@pytest.mark.parametrize(
    ("profiles", "model_server"),
    [((), "vllm"), (("gpu",), "vllm"), (("sim",), "sim")],
    ids=["default (COMPOSE_PROFILES=gpu)", "gpu", "sim"],
)
def test_compose_validates_every_profile(
    env: Path, profiles: tuple[str, ...], model_server: str
) -> None:
    args = [compose_binary(), "-f", str(REPO / "docker-compose.yml"), "--env-file", str(env)]
    for profile in profiles:
        args += ["--profile", profile]
    checked = run([*args, "config", "--quiet"])
    assert checked.returncode == 0, checked.stderr
    services = set(compose_config(env, *profiles)["services"])
    other = {"vllm", "sim"} - {model_server}
    assert model_server in services
    assert not services & other
    assert services >= {*FUNCTIONS, "postgres", "migrate", "proxy", "prefect-server", "flows"}
    assert services >= {"prometheus", "pushgateway", "grafana", "loki", "alloy"}


@pytest.mark.parametrize("secret", sorted(TEST_SECRETS))
def test_compose_refuses_to_run_without_each_secret(tmp_path: Path, secret: str) -> None:
    # One secret left empty at a time: Compose names the first missing variable it meets,
    # in no fixed order, so each must be refused by name on its own.
    bare = env_file(tmp_path, **{secret: ""})
    compose = [compose_binary(), "-f", str(REPO / "docker-compose.yml")]
    result = run([*compose, "--env-file", str(bare), "config", "-q"])
    assert result.returncode != 0
    assert f"set {secret} in .env" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def services(env: Path) -> dict[str, Any]:
    config: dict[str, Any] = compose_config(env, "sim")
    rendered: dict[str, Any] = config["services"]
    rendered["vllm"] = compose_config(env)["services"]["vllm"]
    return rendered


def test_each_function_scales_on_its_own(services: dict[str, Any]) -> None:
    for function in FUNCTIONS:
        service = services[function]
        # A fixed host port or container name would stop a second replica from starting.
        assert "ports" not in service, function
        assert "container_name" not in service, function
        assert service["expose"] == ["8080"]
        # One image: its HEALTHCHECK probes /healthz on SWITCHBOARD_PORT (test_dockerfile).
        assert service["image"] == services["chat"]["image"], function
        assert "healthcheck" not in service, function
        command = service["command"]
        assert command[:4] == ["switchboard", "serve", "--function", function]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        load_settings(service["environment"], dotenv=None)  # every setting compose passes is valid


def test_only_the_proxy_and_the_consoles_publish_ports(services: dict[str, Any]) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == PUBLISHED
    for name in PUBLISHED - {"proxy"}:
        for port in services[name]["ports"]:
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_vllm_gets_a_gpu_and_the_model_from_a_variable(services: dict[str, Any], env: Path) -> None:
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    model = next(
        line.split("=", 1)[1]
        for line in env.read_text().splitlines()
        if line.startswith("VLLM_MODEL=")
    )
    assert f"--model={model}" in vllm["command"]
    assert "start_period" in vllm["healthcheck"]
    # vLLM and the simulator both answer as `llm`, where the functions look.
    for name in ("vllm", "sim"):
        assert "llm" in services[name]["networks"]["default"]["aliases"]
    assert services["chat"]["environment"]["SWITCHBOARD_LLM_URLS"] == "http://llm:8000/v1"


def test_embeddings_are_off_until_named_and_the_simulator_serves_them(
    services: dict[str, Any], env: Path, tmp_path: Path
) -> None:
    # An embedding server is a vLLM of its own: none is assumed (an unreachable one would be
    # probed, found down and alerted on), the sim profile brings one as `embeddings`.
    for function in FUNCTIONS:
        assert services[function]["environment"]["SWITCHBOARD_EMBEDDING_URLS"] == ""
    simulator = services["sim-embeddings"]
    assert "--runner=pooling" in simulator["command"]
    assert "embeddings" in simulator["networks"]["default"]["aliases"]
    assert simulator["healthcheck"]["test"]
    named = compose_config(env_file(tmp_path, EMBEDDING_URLS="http://embeddings:8000/v1"), "sim")
    openai = named["services"]["openai"]["environment"]
    settings = load_settings(openai, dotenv=None)
    assert settings.embedding_urls == ("http://embeddings:8000/v1",)
    assert "sim-embeddings" not in compose_config(env, "gpu")["services"]


def test_state_is_on_volumes_and_services_check_their_health(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert any(v["target"] == "/var/lib/postgresql/data" for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name, target in (
        ("prometheus", "/prometheus"),
        ("loki", "/loki"),
        ("grafana", "/var/lib/grafana"),
    ):
        assert any(
            v["type"] == "volume" and v["target"] == target for v in services[name]["volumes"]
        )
    # Every function's outcome journal (under its working directory) on one shared volume.
    for name in FUNCTIONS:
        journals = [v for v in services[name]["volumes"] if v["source"] == "outcome-journals"]
        assert [(v["type"], v["target"]) for v in journals] == [("volume", "/home/switchboard")]
    for name in ("postgres", "sim", "vllm", "proxy", "prefect-server"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["command"] == ["switchboard", "db", "migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["flows"]["build"]["target"] == "flows"
    assert services["alloy"]["volumes"][1]["source"] == "/var/run/docker.sock"


def test_the_prefect_server_is_the_prefect_the_flows_are_tested_with(
    services: dict[str, Any],
) -> None:
    # The flows (and tests/flows/test_scheduler.py) run the installed Prefect with the flows
    # extra's SQLAlchemy constraint; a server from Prefect's own image would carry its own
    # SQLAlchemy (2.1 makes its scheduler create no run). One image for both.
    server, flows = services["prefect-server"], services["flows"]
    assert server["image"] == flows["image"], (server["image"], flows["image"])
    assert server["command"][:3] == ["prefect", "server", "start"], server["command"]
    assert server["build"]["target"] == flows["build"]["target"] == "flows"


def test_env_example_is_safe_to_keep_as_switchboard_s_own_env_file() -> None:
    # `switchboard` reads .env too, and refuses SWITCHBOARD_ names it does not know.
    example = REPO / ".env.example"
    assert not [
        line for line in example.read_text().splitlines() if line.startswith("SWITCHBOARD_")
    ]
    load_settings({}, dotenv=example)
