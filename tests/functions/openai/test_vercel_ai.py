"""The Vercel AI SDK's default OpenAI provider holds a three-turn conversation.

``openai(model)`` from ``@ai-sdk/openai`` is the Responses API with ``store: true``: from
the second turn on it sends the earlier assistant turns as ``item_reference``s to the
items it was answered with, never their text. Run with Node against the gateway over a
real socket (``vercel_ai/three_turns.mjs``), on PostgreSQL and SQLite: every reference
resolves to the stored reply it names, and the whole exchange is one conversation of the
key, read back through the chat API. The packages are installed once per lockfile
(``vercel_ai/tools.py``; ``make test`` does it first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest

from tests.functions.openai.conftest import Door, secret_of
from tests.functions.openai.vercel_ai import tools
from tests.support.timing import scaled


@pytest.fixture(scope="session")
def vercel_ai() -> Path:
    where, seconds = tools.install()
    # The install's cost, for CI's log (0 when the cache held it).
    sys.stderr.write(f"vercel-ai packages: {'cached' if not seconds else f'{seconds:.1f}s'}\n")
    return where


async def test_three_turns_with_the_default_provider_are_one_conversation(
    door: Door, vercel_ai: Path, tmp_path: Path
) -> None:
    # The script beside the installed packages (ES modules resolve from their own folder).
    (tmp_path / "node_modules").symlink_to(vercel_ai / "node_modules")
    script = tmp_path / tools.SCRIPT.name
    shutil.copy(tools.SCRIPT, script)
    node = shutil.which("node")
    assert node is not None, "node is not installed: run make test (or tools.py install)"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OPENAI_BASE_URL": door.base_url,
        "OPENAI_API_KEY": secret_of(door.api.alice),
        "SWITCHBOARD_MODEL": "sim-model",
    }
    ran = subprocess.run(  # noqa: ASYNC221  # the gateway is another process
        [node, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(90),
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    turns = json.loads(ran.stdout)["turns"]
    assert len(turns) == 3
    assert all(turn["url"].endswith("/v1/responses") for turn in turns)
    assert all(turn["text"] for turn in turns)
    assert all(turn["response_id"].startswith("resp_") for turn in turns)
    assert all(turn["store"] in (None, True) for turn in turns)  # left out: true by default

    conversations = await door.conversations()
    assert len(conversations) == 1
    stored = await door.messages(conversations[0]["id"])
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ] * 3
    replies = [m for m in stored if m["role"] == "assistant"]
    assert [m["content"] for m in replies] == [turn["text"] for turn in turns]
    assert [turn["response_id"] for turn in turns] == [f"resp_{UUID(m['id']).hex}" for m in replies]

    # Turns 2 and 3 named the earlier replies by reference, never by their text.
    for index in (1, 2):
        sent = turns[index]["input"]
        references = [item["id"] for item in sent if item.get("type") == "item_reference"]
        assert references == [f"msg_{UUID(m['id']).hex}" for m in replies[:index]]
        assert not any(item.get("role") == "assistant" for item in sent)
