"""The word-level similarity and diff, and how a stored conversation splits into turns."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from functions.core.messages.schemas import MessageOut
from functions.core.replay.diff import diff_html, pieces, similarity, word_diff
from functions.core.replay.service import asked_turns


@pytest.mark.parametrize(
    ("original", "replayed", "expected"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("the cat sat", "the  cat\nsat", 1.0),  # spacing is not a change
        ("the cat sat", "the dog sat", round(2 * 2 / 6, 6)),
        ("", "", 1.0),
        ("words", "", 0.0),
        ("안녕하세요 서울", "안녕하세요 부산", round(2 * 5 / 14, 6)),  # Hangul: one per syllable
        ("Hello, world!", "Hello world", round(2 * 2 / 6, 6)),  # punctuation counts
    ],
)
def test_similarity(original: str, replayed: str, expected: float) -> None:
    assert similarity(original, replayed) == expected
    assert similarity(replayed, original) == expected


def test_pieces_join_back_to_the_text() -> None:
    text = "  Hi,\tthere 🙂 서울에서\n만나요!  "
    assert "".join(pieces(text)) == text


def test_the_diff_gives_the_replay_back_and_marks_only_the_changed_words() -> None:
    original, replayed = "The sea is blue today.", "The sea is green 🌊 today!"
    diff = word_diff(original, replayed)
    assert "".join(p.text for p in diff if p.op != "delete") == replayed
    assert [(p.op, p.text) for p in diff if p.op != "equal"] == [
        ("delete", " blue"),
        ("insert", " green 🌊"),
        ("delete", "."),
        ("insert", "!"),
    ]


def test_the_html_is_escaped_and_highlighted() -> None:
    left, right = diff_html("a <b> x\nend", "a <b> y\nend")
    assert left.startswith("a &lt;b&gt;")
    assert "<br>" in left
    assert "<del" in left
    assert " x</del>" in left
    assert "<ins" not in left
    assert "<ins" in right
    assert " y</ins>" in right
    assert "<del" not in right


def message(
    seq: int, role: str, *, model: str | None = None, status: str = "complete"
) -> MessageOut:
    return MessageOut(
        id=uuid.uuid4(),
        conversation_id=uuid.UUID(int=1),
        seq=seq,
        role=role,  # type: ignore[arg-type]
        content=f"{role} {seq}",
        status=status,  # type: ignore[arg-type]
        model=model,
        created_at=datetime.now(UTC),
    )


def test_turns_are_what_asked_and_the_reply_the_gateway_generated() -> None:
    stored = [
        message(1, "system"),
        message(2, "user"),
        message(3, "assistant", model="m"),
        # A client's own assistant turn (stored as sent, no model) asks with the user's.
        message(4, "assistant"),
        message(5, "user"),
        message(6, "assistant", model="m", status="failed"),
        message(7, "user"),  # the conversation ended with a question
    ]
    turns = asked_turns(stored)
    assert [([m.seq for m in t.asking], t.reply.seq if t.reply else None) for t in turns] == [
        ([1, 2], 3),
        ([4, 5], 6),
        ([7], None),
    ]
    assert [t.start for t in turns] == [0, 3, 6]
