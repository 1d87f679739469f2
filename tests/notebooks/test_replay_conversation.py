"""``replay_conversation.ipynb`` top to bottom: a conversation from the database replayed
and saved, and one from an export file; the values it computed checked against the replay
service's own."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.conversations import service as conversations
from functions.core.exports.schemas import ExportRequest
from functions.core.exports.service import export_history
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.llm.client import LLMClient
from functions.core.messages import service as messages
from functions.core.replay.service import ReplayService
from tests.core.exports.conftest import writers_ended
from tests.core.replay.conftest import FAILS, make_config, seed_conversation
from tests.notebooks.conftest import assert_clean_run, execute, render_html
from tests.support.simulator import SimulatorProcess

TEXTS = ["What does Switchboard do?", f"{FAILS} Which models?", "감사합니다! One more thing 🙂"]


async def seed(chat: ChatService) -> tuple[uuid.UUID, uuid.UUID]:
    await make_config("prod", system_prompt="Be brief.")
    await make_config("candidate", system_prompt="Be thorough and warm.", temperature=0.8)
    owner = (await keys.create_key(ApiKeyCreate(name="support-bot"))).id
    return owner, await seed_conversation(chat, owner, "prod", TEXTS, title="Support chat")


async def test_a_conversation_from_the_database_replayed_and_saved(
    pg: Engine[Any],
    pg_url: str,
    sim: SimulatorProcess,
    chat: ChatService,
    llm: LLMClient,
    jupyter_home: Path,
    tmp_path: Path,
) -> None:
    owner, conversation = await seed(chat)

    run = await execute(
        "replay_conversation",
        tmp_path,
        jupyter_home,
        llm_url=sim.base_url,
        database_url=pg_url,
        conversation_id=str(conversation),
        config="candidate",
        mode="rollout",
        save=True,
    )

    assert_clean_run(run)
    values = run.values
    assert values["conversation_id"] == str(conversation)
    assert values["messages"] == 6
    assert (values["config"], values["mode"]) == ("candidate@1", "rollout")
    # The same replay, here: the notebook shows what the service computes.
    expected = await ReplayService(llm, chat).replay(
        conversation, config="candidate", mode="rollout"
    )
    assert [t["replayed_content"] for t in values["turns"]] == [
        t.replayed.content for t in expected.turns
    ]
    assert [t["similarity"] for t in values["turns"]] == [t.similarity for t in expected.turns]
    assert [t["original_status"] for t in values["turns"]] == ["complete", "failed", "complete"]
    assert values["summary"]["turns"] == 3
    assert values["summary"]["original_failed"] == 1
    assert values["summary"]["mean_similarity"] == expected.summary().mean_similarity
    # Saved: a conversation of the same key, marked as this replay.
    saved = uuid.UUID(values["saved_conversation_id"])
    about = await conversations.get_conversation(owner, saved)
    assert about.metadata["replay"]["of"] == str(conversation)
    assert about.metadata["replay"]["mode"] == "rollout"
    stored = (await messages.list_messages(owner, saved)).data
    assert [m.content for m in stored if m.role == "assistant"] == [
        t["replayed_content"] for t in values["turns"]
    ]
    # The side-by-side table highlights the words that changed.
    [table] = [html for html in run.data("text/html") if "replay (candidate@1)" in html]
    assert "<ins" in table
    assert "<del" in table
    assert "failed: llm_error" in table
    assert len(run.data("image/png")) == 1
    # Rendered, it is a report that opens without a network: nothing loaded from outside.
    page = render_html(run)
    assert "<script src=" not in page
    assert "cdnjs" not in page
    assert page.count("<img") == 1
    assert "감사합니다" in page


async def test_a_conversation_from_an_export_file_replayed_faithfully(
    pg: Engine[Any],
    pg_url: str,
    sim: SimulatorProcess,
    chat: ChatService,
    jupyter_home: Path,
    tmp_path: Path,
) -> None:
    _, conversation = await seed(chat)
    await writers_ended()
    exported = await export_history(
        ExportRequest(destination=str(tmp_path / "exports"), format="csv"),
        now=datetime.now(UTC),
    )
    manifest = tmp_path / "exports" / exported.manifest_path

    run = await execute(
        "replay_conversation",
        tmp_path,
        jupyter_home,
        llm_url=sim.base_url,
        database_url=pg_url,
        export_file=str(manifest),
        config="prod",
        config_version=1,
    )

    assert_clean_run(run)
    values = run.values
    assert values["conversation_id"] == str(conversation)
    assert (values["config"], values["mode"]) == ("prod@1", "faithful")
    assert values["saved_conversation_id"] is None
    # Against the version that answered, every completed turn comes back word for word;
    # the turn that failed is shown as failed, and answered this time.
    assert [(t["original_status"], t["similarity"]) for t in values["turns"]] == [
        ("complete", 1.0),
        ("failed", None),
        ("complete", 1.0),
    ]
    assert values["summary"]["changed"] == 1
