"""The stack of docker-compose.yml, rehearsed here without Docker.

``stack`` starts what compose would start, from what Compose itself renders of
docker-compose.yml (``--profile sim``): the migration's command, the simulator's command,
each function's command and environment (so every setting compose passes is read by the
real settings loader, with the workers it asks for), and Caddy with the real Caddyfile in
front. Only what a machine without Docker must change is changed: the database URL (a
fresh database on the test PostgreSQL), loopback addresses and free ports instead of
service names. ``traffic`` then uses the API through the proxy like a person would, so
the metrics and logs the other tests read come from real requests (the OpenAI door's
too, through the official ``openai`` client).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from functions.core.flow_metrics import report_flow_run
from functions.core.health import service as health
from functions.core.runtime import open_runtime
from functions.core.settings import Settings, load_settings
from functions.serve import FUNCTIONS
from tests.ops.tools import (
    MONITORING,
    TEST_SECRETS,
    compose_config,
    env_file,
    run,
    venv_tool,
)
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.process import HOST, ServiceProcess
from tests.support.pushgateway import FlowSamples, PushgatewayProcess, pushed

# A phrase that must never reach a log line unless message text logging is on.
PROMPT_MARKER = "the-marmalade-protocol-7f3a"
# Where compose's embedding simulator answers (its network alias).
EMBEDDING_URL = "http://embeddings:8000/v1"


class ComposeProcess(ServiceProcess):
    """A compose service's command, run as ``python -m functions.cli`` with its args."""

    def __init__(self, command: list[str], env: dict[str, str], health_path: str) -> None:
        assert command[0] == "switchboard", command
        super().__init__("functions.cli", tuple(command[1:]), env=env)
        self.health_path = health_path


class CaddyProcess(ServiceProcess):
    """Caddy running a Caddyfile."""

    health_path = "/proxy/health"

    def __init__(self, caddyfile: Path) -> None:
        super().__init__("caddy", ())
        self.caddyfile = caddyfile

    def command(self) -> list[str]:
        return [
            venv_tool("caddy"),
            "run",
            "--config",
            str(self.caddyfile),
            "--adapter",
            "caddyfile",
        ]


def local_caddyfile(tmp: Path, proxy_port: int, ports: dict[str, int]) -> Path:
    """The real Caddyfile, listening on loopback, each function's replicas on loopback."""
    text = (MONITORING / "proxy" / "Caddyfile").read_text()
    text = text.replace("\n:80 {", f"\nhttp://{HOST}:{proxy_port} {{", 1)
    for function, port in ports.items():
        text, count = re.subn(
            rf"import function {function} 8080\b", f"import function {HOST} {port}", text
        )
        assert count, f"the Caddyfile routes nothing to {function}"
    path = tmp / "Caddyfile"
    path.write_text(text)
    return path


def with_password(url: str) -> str:
    """``url`` with a password, as compose's has (ignored by a trust-auth server): the logs
    test checks it never reaches a log line."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    netloc = f"{parts.username or 'postgres'}:{TEST_SECRETS['POSTGRES_PASSWORD']}@{parts.hostname}"
    return urlunsplit(parts._replace(netloc=f"{netloc}:{parts.port or 5432}"))


def with_arg(command: list[str], name: str, value: str) -> list[str]:
    """``command`` with ``--name=...`` set to ``value``."""
    return [f"--{name}={value}" if arg.startswith(f"--{name}=") else arg for arg in command]


def arg(command: list[str], name: str) -> str:
    """The value of ``--name=...`` in ``command``."""
    return next(a.split("=", 1)[1] for a in command if a.startswith(f"--{name}="))


def simulator(service: dict[str, Any]) -> ComposeProcess:
    """A simulator service's command, on loopback and a free port."""
    command = with_arg(service["command"], "host", HOST)
    process = ComposeProcess(command, {}, "/health")
    process.args = tuple(with_arg(command, "port", str(process.port))[1:])
    return process


@dataclass
class Stack:
    config: dict[str, Any]
    database_url: str
    env: dict[str, str]
    sim: ComposeProcess
    functions: dict[str, ComposeProcess]
    proxy: CaddyProcess
    model: str
    embeddings: ComposeProcess
    embedding_model: str
    # What traffic created: ids and secrets that must never be labels or logged.
    admin_secret: str = ""
    secrets: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy.root_url

    def logs(self) -> str:
        return "".join(process.log_text() for process in self.functions.values())


@pytest.fixture(scope="session")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The OpenAI door's /v1/embeddings on, as docs/operations.md says to turn it on.
    return env_file(tmp_path_factory.mktemp("compose"), EMBEDDING_URLS=EMBEDDING_URL)


@pytest.fixture(scope="session")
async def stack(
    compose_env: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    config = compose_config(compose_env, "sim")
    services = config["services"]
    database_url = with_password(await create_postgres_database("switchboard_ops"))
    base_env = {
        **services["chat"]["environment"],
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_HOST": HOST,
    }
    started: list[ServiceProcess] = []
    try:
        migrate = services["migrate"]["command"]
        result = run(
            [sys.executable, "-m", "functions.cli", *migrate[1:]], env={**os.environ, **base_env}
        )
        assert result.returncode == 0, result.stdout + result.stderr

        sim = simulator(services["sim"])
        started.append(sim.start())
        embeddings = simulator(services["sim-embeddings"])
        started.append(embeddings.start())
        assert base_env["SWITCHBOARD_EMBEDDING_URLS"] == EMBEDDING_URL

        env = {
            **base_env,
            "SWITCHBOARD_LLM_URLS": f"http://{HOST}:{sim.port}/v1",
            "SWITCHBOARD_EMBEDDING_URLS": f"http://{HOST}:{embeddings.port}/v1",
        }
        functions: dict[str, ComposeProcess] = {}
        for function in FUNCTIONS:
            process = ComposeProcess(services[function]["command"], {}, "/healthz")
            # Where the workers share their metrics (serve makes one; tests look inside).
            shared = tmp_path_factory.mktemp(f"{function}-metrics")
            process.env = {
                **env,
                "SWITCHBOARD_PORT": str(process.port),
                "PROMETHEUS_MULTIPROC_DIR": str(shared),
            }
            functions[function] = process
            started.append(process)
        # Side by side, as compose starts them.
        with ThreadPoolExecutor(len(functions)) as pool:
            list(pool.map(ServiceProcess.start, functions.values()))

        tmp = tmp_path_factory.mktemp("proxy")
        proxy = CaddyProcess(tmp / "Caddyfile")
        local_caddyfile(tmp, proxy.port, {name: p.port for name, p in functions.items()})
        started.append(proxy.start())
        yield Stack(
            config,
            database_url,
            env,
            sim,
            functions,
            proxy,
            model=arg(list(sim.args), "model"),
            embeddings=embeddings,
            embedding_model=arg(list(embeddings.args), "model"),
        )
    finally:
        for each in reversed(started):
            each.close()
        await drop_postgres_database(database_url)


def create_admin_key(stack: Stack) -> str:
    """``switchboard keys create --admin`` with the stack's environment, as an operator would."""
    result = run(
        [sys.executable, "-m", "functions.cli", "keys", "create", "--name", "ops", "--admin"],
        env={**os.environ, **stack.env},
    )
    assert result.returncode == 0, result.stderr
    return next(
        line.split(":", 1)[1].strip()
        for line in result.stdout.splitlines()
        if line.startswith("secret:")
    )


async def record_health_check(stack: Stack) -> None:
    """What the health-check flow does each minute: probe every upstream, record verdicts."""
    settings = load_settings(dict(stack.env), dotenv=None)
    async with open_runtime(settings, configure_logs=False) as runtime:
        await health.check_and_record(runtime.require_llm())


@pytest.fixture(scope="session")
async def traffic(stack: Stack) -> Stack:
    """Real use of the API through the proxy: keys, a configuration, streamed and plain
    sends, a history, a model no upstream serves, a 404; then a recorded health check."""
    stack.admin_secret = create_admin_key(stack)
    stack.secrets.append(stack.admin_secret)
    admin = {"Authorization": f"Bearer {stack.admin_secret}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=admin, timeout=30) as client:
        created = await client.post("/v1/keys", json={"name": "app"})
        assert created.status_code == 201, created.text
        stack.secrets.append(created.json()["secret"])
        stack.ids.append(created.json()["id"])
        for name, model in (("ops", stack.model), ("ghost", "no-such-model")):
            made = await client.post(
                "/v1/configs", json={"name": name, "model": model, "is_default": name == "ops"}
            )
            assert made.status_code == 201, made.text
        conversation = (await client.post("/v1/conversations", json={"title": "ops"})).json()
        conversation_id = conversation["id"]
        stack.ids.append(conversation_id)
        messages = f"/v1/conversations/{conversation_id}/messages"
        sent = await client.post(messages, json={"content": f"Say hi. {PROMPT_MARKER}"})
        assert sent.status_code == 201, sent.text
        stack.ids += [sent.json()["id"], sent.json()["conversation_id"]]
        async with client.stream(
            "POST", messages, json={"content": f"Again. {PROMPT_MARKER}", "stream": True}
        ) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            body = "".join([chunk async for chunk in streamed.aiter_text()])
        assert "event: done" in body, body
        ids = re.findall(r'"id":\s*"([0-9a-f-]{36})"', body)
        stack.ids += ids
        assert (await client.get(messages)).status_code == 200
        ghost = (await client.post("/v1/conversations", json={"config": "ghost"})).json()
        stack.ids.append(ghost["id"])
        failed = await client.post(
            f"/v1/conversations/{ghost['id']}/messages", json={"content": "anyone?"}
        )
        assert failed.status_code >= 400
        missing = await client.get(f"/v1/conversations/{uuid.uuid4()}")
        assert missing.status_code == 404
    await openai_traffic(stack)
    await record_health_check(stack)
    # Every worker hears of the verdict (NOTIFY) and mirrors its live metrics each second.
    await asyncio.sleep(2)
    return stack


async def openai_traffic(stack: Stack) -> None:
    """The OpenAI door through the proxy, as an OpenAI client uses it (only its base URL
    and key changed): a configuration's name as the model, a stream with usage, the models,
    a model nobody serves, a legacy completion, embeddings."""
    door = AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key=stack.admin_secret, max_retries=0, timeout=30
    )
    async with door:
        question = [{"role": "user", "content": f"Say hi. {PROMPT_MARKER}"}]
        plain = await door.chat.completions.with_raw_response.create(model="ops", messages=question)
        assert plain.parse().choices[0].message.content
        stack.ids.append(plain.headers["x-switchboard-conversation"])
        streamed = await door.chat.completions.create(
            model=stack.model,
            messages=question,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in streamed]
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens > 0
        listed = {model.id async for model in door.models.list()}
        assert {"ops", stack.model} <= listed, listed
        with pytest.raises(openai.NotFoundError):
            await door.chat.completions.create(model="no-such-model", messages=question)
        completion = await door.completions.create(model=stack.model, prompt="Say hi.")
        assert completion.choices[0].text
        embedded = await door.embeddings.create(model=stack.embedding_model, input=["one", "two"])
        assert len(embedded.data) == 2
        assert embedded.data[0].embedding


def scrape(process: ServiceProcess) -> str:
    """One function's /metrics, on a new connection (so any of its workers may answer)."""
    response = httpx.get(f"{process.root_url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


@pytest.fixture(scope="session")
def scraped(traffic: Stack) -> dict[str, str]:
    """Each function's /metrics after the traffic."""
    return {name: scrape(process) for name, process in traffic.functions.items()}


@pytest.fixture(scope="session")
def sim_metrics(traffic: Stack) -> str:
    return httpx.get(f"{traffic.sim.root_url}/metrics", timeout=10).text


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[PushgatewayProcess]:
    with PushgatewayProcess() as process:
        yield process


@pytest.fixture(scope="session")
async def flow_samples(
    pushgateway: PushgatewayProcess,
) -> FlowSamples:
    """A health check that succeeded, then an export that succeeded and then failed."""
    settings = Settings(metrics_pushgateway_url=pushgateway.root_url)
    async with report_flow_run(settings, "health-check") as run:
        run.add("upstreams", 2)
    async with report_flow_run(settings, "export") as run:
        run.add("messages", 120)
    with pytest.raises(RuntimeError, match="bucket gone"):
        await failing_export(settings)
    return pushed(pushgateway)


async def failing_export(settings: Settings) -> None:
    async with report_flow_run(settings, "export") as run:
        run.add("messages", 7)
        raise RuntimeError("bucket gone")
