"""The prompt rule, as a pure function: which stored messages a model sees."""

from __future__ import annotations

from functions.core.chat.prompt import build_prompt, counted_history, history_limit
from functions.core.messages.schemas import StoredTurn, Turn


def stored(*rows: tuple[str, str, str]) -> list[StoredTurn]:
    return [
        StoredTurn(seq=seq, status=status, turn=Turn(role=role, content=text))  # type: ignore[arg-type]
        for seq, (role, text, status) in enumerate(rows, start=1)
    ]


def texts(turns: list[Turn]) -> list[str]:
    return [turn.content for turn in turns]


HISTORY = stored(
    ("user", "q1", "complete"),
    ("assistant", "a1", "complete"),
    ("user", "too long", "complete"),
    ("assistant", "", "failed"),
    ("user", "q3", "complete"),
    ("assistant", "partial", "cancelled"),
    ("user", "q4", "complete"),
    ("assistant", "a4", "complete"),
)


def test_failed_and_cancelled_exchanges_leave_with_their_question() -> None:
    assert texts(counted_history(HISTORY)) == ["q1", "a1", "q4", "a4"]


def test_history_mode_adds_the_system_prompt_and_the_new_turns() -> None:
    prompt = build_prompt(
        mode="history",
        new_turns=[Turn(role="user", content="q5")],
        stored=HISTORY,
        system_prompt="Be brief.",
    )
    assert [(t.role, t.content) for t in prompt] == [
        ("system", "Be brief."),
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q4"),
        ("assistant", "a4"),
        ("user", "q5"),
    ]


def test_a_window_keeps_the_newest_messages_but_never_drops_new_turns() -> None:
    new = [Turn(role="user", content="q5")]
    assert texts(build_prompt(mode="history", new_turns=new, stored=HISTORY, window=3)) == [
        "q4",
        "a4",
        "q5",
    ]
    many = [Turn(role="user", content=f"n{i}") for i in range(3)]
    assert texts(build_prompt(mode="history", new_turns=many, stored=HISTORY, window=2)) == [
        "n0",
        "n1",
        "n2",
    ]


def test_exact_mode_is_exactly_the_turns_sent() -> None:
    turns = [Turn(role="system", content="s"), Turn(role="user", content="u")]
    assert build_prompt(mode="exact", new_turns=turns, stored=HISTORY, system_prompt="x") == turns


def test_how_much_history_the_claim_reads_is_always_bounded() -> None:
    assert history_limit("exact", None, 1000) == 0
    assert history_limit("history", None, 1000) == 1000
    assert history_limit("history", 3, 1000) == 8
    assert history_limit("history", 5000, 1000) == 1000
