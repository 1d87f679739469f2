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

from tests.support import process
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
        dev = process.start(
            [sys.executable, "-m", "functions.cli", "dev"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + process.START_TIMEOUT_S
        while not _listening(port):
            assert dev.poll() is None, log.read_text()
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
        # The quick start's simulator keeps no prompt for anyone to read.
        stats = httpx.get(f"http://127.0.0.1:{simulator_port}/sim/stats").json()
        assert stats["last_chat_request"] is None
        # Stopping the quick start (the process alone) stops the simulator it started.
        dev.send_signal(signal.SIGTERM)
        dev.wait(process.STOP_TIMEOUT_S)
        deadline = time.monotonic() + process.scaled(10)
        while _listening(simulator_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _listening(simulator_port)
    finally:
        process.stop(dev)


# --- the traps a new user meets ------------------------------------------------------


def _env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return env | {"SWITCHBOARD_PORT": str(port), "PYTHONPATH": str(REPO_ROOT)}


class Dev:
    """``switchboard dev`` in a directory, started and stopped as a user would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log = directory / "dev.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Dev:
        with self.log.open("wb") as out:
            self.process = process.start(
                [sys.executable, "-m", "functions.cli", "dev"],
                cwd=self.directory,
                env=_env(self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + process.START_TIMEOUT_S
        while not _listening(self.port):
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.1)
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        process.stop(self.process)

    @property
    def output(self) -> str:
        return self.log.read_text()

    @property
    def secret(self) -> str:
        return (self.directory / ".switchboard/dev-admin-key").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=30,
        )


def _cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return process.run(
        [sys.executable, "-m", "functions.cli", *args],
        cwd=directory,
        env=_env(free_port()),
        capture_output=True,
        text=True,
    )


def _send_works(client: httpx.Client) -> None:
    conversation = client.post("/v1/conversations", json={"title": "again"})
    assert conversation.status_code == 201, conversation.text
    reply = client.post(
        f"/v1/conversations/{conversation.json()['id']}/messages", json={"content": "Hi!"}
    )
    assert reply.status_code == 201, reply.text


def test_dev_starts_again_after_the_default_config_is_archived(tmp_path: Path) -> None:
    with Dev(tmp_path) as dev, dev.client() as client:
        assert client.delete("/v1/configs/default").status_code in (200, 204)
    with Dev(tmp_path) as dev, dev.client() as client:
        assert "'default' is archived: created 'default-2'" in dev.output, dev.output
        assert "Traceback" not in dev.output
        _send_works(client)
    # A third start finds that default and says nothing more.
    with Dev(tmp_path) as dev:
        assert "default config: default-2 (version 1" in dev.output
        assert "archived" not in dev.output


def test_dev_replaces_a_saved_key_the_database_does_not_accept(tmp_path: Path) -> None:
    key_file = tmp_path / ".switchboard/dev-admin-key"
    key_file.parent.mkdir()
    key_file.write_text("sb-" + "x" * 43 + "\n")  # from another (deleted) database
    key_file.chmod(0o644)
    with Dev(tmp_path) as dev, dev.client() as client:
        assert "is not in this database: made a new one" in dev.output, dev.output
        assert dev.secret in dev.output
        assert oct(key_file.stat().st_mode)[-3:] == "600"
        listed = client.get("/v1/keys")
        assert listed.status_code == 200
        body = listed.json()
        keys = body["data"] if isinstance(body, dict) else body
        own = next(key for key in keys if key["name"] == "local-admin")
    revoked = _cli(tmp_path, "keys", "revoke", own["id"])
    assert revoked.returncode == 0, revoked.stderr
    old = key_file.read_text().strip()
    with Dev(tmp_path) as dev, dev.client() as client:
        assert f"({old[:12]}...) was revoked: made a new one" in dev.output, dev.output
        assert dev.secret != old
        _send_works(client)
    with Dev(tmp_path) as dev:
        assert "checked: active, admin" in dev.output


def test_dev_on_a_busy_port_says_so_in_one_line_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (["dev"], ["serve"], ["dev", "--port", str(port)]):
            env = _env(port) if args != ["dev", "--port", str(port)] else _env(free_port())
            result = process.run(
                [sys.executable, "-m", "functions.cli", *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
            )
            assert result.returncode == 4, result
            assert result.stderr.count("\n") == 1, result.stderr
            assert f"127.0.0.1:{port}: address already in use" in result.stderr
            assert "--port" in result.stderr
            assert "SWITCHBOARD_PORT" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no database, no key, no simulator left behind


def test_dev_prints_the_commands_for_its_port_and_make_passes_the_port(tmp_path: Path) -> None:
    with Dev(tmp_path) as dev:
        assert f"export SB=http://127.0.0.1:{dev.port} KEY=$(cat .switchboard/dev-admin-key)" in (
            dev.output
        )
    made = process.run(
        ["make", "-n", "dev", "PORT=8081"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "switchboard dev --port 8081" in made.stdout
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make dev PORT=8081" in readme
    assert "export SB=http://127.0.0.1:${PORT:-8080}" in readme


def test_dev_makes_the_database_private_and_says_where_it_is(tmp_path: Path) -> None:
    with Dev(tmp_path) as dev:
        database = tmp_path / ".switchboard/switchboard.sqlite"
        assert f"(= {database})" in dev.output
        assert f"created {database} (readable by you only)" in dev.output
        assert oct(database.stat().st_mode)[-3:] == "600"
        assert oct(database.parent.stat().st_mode)[-3:] == "700"


def test_read_only_commands_in_an_empty_directory_create_nothing(tmp_path: Path) -> None:
    for args in (
        ["keys", "list"],
        ["configs", "list"],
        ["db", "status"],
        ["keys", "revoke", "00000000-0000-4000-8000-000000000000"],
    ):
        result = _cli(tmp_path, *args)
        assert result.returncode == 3, (args, result)
        database = tmp_path / ".switchboard/switchboard.sqlite"
        assert result.stderr == (
            f"error: no SQLite database at {database}: run `switchboard db migrate` to create "
            "it (SWITCHBOARD_DATABASE_URL=sqlite:///.switchboard/switchboard.sqlite)\n"
        )
    # Not even when the folder exists (the dev key's folder, say).
    (tmp_path / ".switchboard").mkdir()
    assert _cli(tmp_path, "db", "status").returncode == 3
    assert list(tmp_path.rglob("*")) == [tmp_path / ".switchboard"]

    migrated = _cli(tmp_path, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    database = tmp_path / ".switchboard/switchboard.sqlite"
    assert f"created SQLite database {database} (readable by you only)" in migrated.stdout
    assert f"(= {database})" in migrated.stdout
    assert oct(database.stat().st_mode)[-3:] == "600"
    assert _cli(tmp_path, "keys", "list").returncode == 0
