"""``switchboard dev`` (what ``make dev`` runs) on a fresh directory: nothing else needed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.process import REPO_ROOT, free_port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_migrates_creates_a_key_starts_a_simulator_and_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env |= {"SWITCHBOARD_PORT": str(port), "PYTHONPATH": str(REPO_ROOT)}
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "functions.cli", "dev"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        output = log.read_text()
        assert "SIMULATED REPLIES" in output
        secret = (tmp_path / ".switchboard/dev-admin-key").read_text().strip()
        assert secret in output  # shown once, on the first run
        assert oct((tmp_path / ".switchboard/dev-admin-key").stat().st_mode)[-3:] == "600"
        assert (tmp_path / ".switchboard/switchboard.sqlite").exists()

        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            ready = client.get("/readyz").json()
            assert ready["llm"]["status"] == "simulated"
            conv = client.post("/v1/conversations", json={"title": "hello"}).json()
            assert conv["config"] == "default"
            reply = client.post(
                f"/v1/conversations/{conv['id']}/messages", json={"content": "Hi!"}, timeout=30
            )
            assert reply.status_code == 201, reply.text
            assert reply.json()["content"]
        simulator_port = int(re.search(r"simulator at http://127\.0\.0\.1:(\d+)", output)[1])  # type: ignore[index]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    # Stopping the quick start stops the simulator it started.
    deadline = time.monotonic() + 10
    while _listening(simulator_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _listening(simulator_port)
