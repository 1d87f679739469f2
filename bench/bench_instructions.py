"""Instructions per stored send, counted by callgrind: a deterministic cost of the send path.

Wall-clock and CPU-time benchmarks swing by ±30% on a shared 2-core machine; an
instruction count does not. This runs one gateway (``switchboard serve``, one worker)
under ``valgrind --tool=callgrind`` with instrumentation off during start-up, warms it up,
counts only N sequential sends (every exchange stored in a fresh PostgreSQL database,
against the simulator), and prints instructions per send, non-streamed and streamed.

By default the sends are the chat API's (``POST /v1/conversations/{id}/messages``).
``--door`` sends them through the OpenAI door instead (``POST /v1/chat/completions``), as
chat applications do: each request resends its chat's whole history, growing from
``FIRST_TURNS`` to ``LAST_TURNS`` messages, so every send pays the thread lookup and
appends to its conversation. ``--door both`` measures the two in one run.

Point ``--code`` at another checkout (``git worktree add /tmp/base <commit>``) to compare
two versions in the same conditions; ``--cli`` names its CLI module if it predates
``functions.cli``::

    scripts/with-postgres.sh .venv/bin/python -m bench.bench_instructions
    scripts/with-postgres.sh .venv/bin/python -m bench.bench_instructions \\
        --code /tmp/base --cli functions.core.cli
    scripts/with-postgres.sh .venv/bin/python -m bench.bench_instructions --door both

Needs valgrind (``apt-get install valgrind``). Start-up under callgrind takes a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.process import free_port

PROMPT = "Tell me about the weather today in Seoul."
WARMUP = 30
# The door's chats: a history resent in full, from FIRST_TURNS messages to LAST_TURNS, as
# bench_openai's (the same rows, counted instead of timed).
FIRST_TURNS, LAST_TURNS = 10, 40
CONFIG = "ir"


def wait_until_up(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f}s")


def run_cli(code: Path, cli: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", cli, *args],
        cwd=code,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def chat_sender(client: httpx.Client, *, stream: bool) -> Callable[[], None]:
    """One chat API send per call, into one conversation (its prompt a window of 2)."""
    conversation = client.post("/v1/conversations", json={"title": "ir"}).json()["id"]
    path = f"/v1/conversations/{conversation}/messages"

    def send() -> None:
        if stream:
            with client.stream("POST", path, json={"content": PROMPT, "stream": True}) as r:
                assert r.status_code == 200
                for _ in r.iter_bytes():
                    pass
        else:
            r = client.post(path, json={"content": PROMPT})
            assert r.status_code == 201, r.text

    return send


def _seed_history(chat: int) -> list[dict[str, str]]:
    # Each chat's opening is its own, so a new chat is a new conversation, not a branch.
    history = []
    for turn in range(FIRST_TURNS // 2):
        history.append({"role": "user", "content": f"chat {chat} question {turn}: tell me more"})
        history.append({"role": "assistant", "content": f"answer {turn} of chat {chat}"})
    return history


def _streamed_text(response: httpx.Response) -> str:
    text = []
    for line in response.iter_lines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or ():
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


def door_sender(client: httpx.Client, *, stream: bool) -> Callable[[], None]:
    """One OpenAI door send per call: a chat resent in full, its reply appended as the
    client would, restarted as a new chat at LAST_TURNS messages."""
    chats = iter(range(1_000_000))
    history = _seed_history(next(chats))
    stored_in: str | None = None

    def send() -> None:
        nonlocal history, stored_in
        turn = len(history) // 2
        history.append({"role": "user", "content": f"question {turn}: go on"})
        body: dict[str, object] = {"model": CONFIG, "messages": history, "stream": stream}
        if stream:
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200, r.read()
                text = _streamed_text(r)
        else:
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            text = r.json()["choices"][0]["message"]["content"]
        # Every send of a chat after its first is appended to the same conversation.
        conversation = r.headers["X-Switchboard-Conversation"]
        assert stored_in in (None, conversation), "a resent history was not threaded"
        stored_in = conversation
        history.append({"role": "assistant", "content": text})
        if len(history) >= LAST_TURNS:
            history, stored_in = _seed_history(next(chats)), None

    return send


def measure(code: Path, cli: str, sends: int, *, stream: bool, door: bool = False) -> float:
    """Instructions per send of the gateway in ``code``, in millions: the chat API's sends,
    or (``door``) the OpenAI door's."""
    database_url = asyncio.run(create_postgres_database("switchboard_instructions"))
    sim_port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env |= {
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_LLM_URLS": f"http://127.0.0.1:{sim_port}/v1",
        "SWITCHBOARD_LOG_FORMAT": "json",
    }
    # Work done on timers (a key re-checked, the lease renewed) grows with the run's wall
    # time, which callgrind and the machine's load stretch, not with the sends: at their
    # defaults it moved a count by 2% from one run to the next. An older checkout may not
    # have the setting (and refuses an unknown one), so each is set where it exists.
    known = (code / "functions" / "core" / "settings.py").read_text()
    steadying = {"SWITCHBOARD_AUTH_CACHE_TTL_S": "300", "SWITCHBOARD_LEASE_TTL_S": "600"}
    env |= {
        name: value
        for name, value in steadying.items()
        if name.removeprefix("SWITCHBOARD_").lower() in known
    }
    run_cli(code, cli, env, "db", "migrate")
    secret = json.loads(
        run_cli(code, cli, env, "keys", "create", "--name", "ir", "--admin", "--json")
    )["secret"]
    simulator = subprocess.Popen(
        [sys.executable, "-m", "functions.simulator", "--port", str(sim_port), "--tokens", "16"],
        cwd=code,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    out = Path(f"/tmp/switchboard-callgrind.{os.getpid()}.out")
    gateway = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            cli,
            "serve",
            "--port",
            str(gateway_port),
        ],
        cwd=code,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{sim_port}/health")
        base = f"http://127.0.0.1:{gateway_port}"
        wait_until_up(f"{base}/healthz")
        client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=120
        )
        created = client.post(
            "/v1/configs",
            json={
                "name": CONFIG,
                "model": "sim-model",
                "max_tokens": 16,
                "history_window": 2,
                "is_default": True,
            },
        )
        assert created.status_code in (200, 201), created.text
        send = door_sender(client, stream=stream) if door else chat_sender(client, stream=stream)
        for _ in range(WARMUP):
            send()
        callgrind(gateway.pid, "-i", "on")
        for _ in range(sends):
            send()
        callgrind(gateway.pid, "-i", "off")
        callgrind(gateway.pid, "-d")
        time.sleep(2)
    finally:
        gateway.terminate()
        try:
            gateway.wait(120)
        except subprocess.TimeoutExpired:
            gateway.kill()
        simulator.terminate()
        simulator.wait(10)
        asyncio.run(drop_postgres_database(database_url))
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="ignore").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
        dump.unlink()
    return total / sends / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", type=Path, default=Path.cwd(), help="a checkout to measure")
    parser.add_argument("--cli", default="functions.cli", help="its CLI module")
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--modes", choices=["both", "non-streamed", "streamed"], default="both")
    parser.add_argument(
        "--door",
        nargs="?",
        const="only",
        choices=["only", "both"],
        help="send through the OpenAI door (threaded histories); 'both': the chat API too",
    )
    args = parser.parse_args()
    code = args.code.resolve()
    modes = {"both": (False, True), "non-streamed": (False,), "streamed": (True,)}[args.modes]
    apis = {None: (False,), "only": (True,), "both": (False, True)}[args.door]
    for door in apis:
        for stream in modes:
            per_send = measure(code, args.cli, args.sends, stream=stream, door=door)
            kind = ("streamed" if stream else "non-streamed") + (" door" if door else " chat API")
            print(f"{code}: {per_send:.3f} M instructions per {kind} send ({args.sends} sends)")


if __name__ == "__main__":
    main()
