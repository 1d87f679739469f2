"""Reading datasets: good files, and bad lines named by line number and field."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.core.db.engine import engine_from_url, use_engine
from functions.core.db.tables import EvalRun, Message
from functions.core.errors import InvalidInputError
from functions.core.evals.datasets import (
    DatasetError,
    encode_items,
    item_turns,
    load_dataset,
    parse_dataset,
    write_dataset,
)
from functions.core.evals.schemas import DatasetItem, DatasetMessage
from functions.core.messages.schemas import Turn
from tests.core.evals.conftest import write_jsonl
from tests.support.databases import create_postgres_database, drop_postgres_database, sqlite_url
from tests.support.process import switchboard_cli

REPO = Path(__file__).resolve().parents[3]


def test_the_sample_dataset_is_valid_and_covers_what_it_promises() -> None:
    dataset = load_dataset(REPO / "flows" / "datasets" / "sample.jsonl")
    assert len(dataset.items) >= 30
    text = (REPO / "flows" / "datasets" / "sample.jsonl").read_text(encoding="utf-8")
    assert any("\uac00" <= ch <= "\ud7a3" for ch in text)  # Hangul
    assert "🚀" in text
    types = {type(spec).__struct_config__.tag for item in dataset.items for spec in item.scorers}
    assert types >= {"exact_match", "contains", "regex", "json_valid", "json_schema", "numeric"}
    assert "similarity" in types
    assert any(item.messages for item in dataset.items)


def test_a_good_file_reads_in_order_with_its_lines_and_a_stable_hash(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "prompt": "안녕하세요 🙂", "expected": "hi"},
        "",
        {
            "id": "b",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "scorers": [{"type": "contains", "value": "x"}],
            "metadata": {"source": "test"},
        },
    ]
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", lines))
    assert [item.id for item in dataset.items] == ["a", "b"]
    assert dataset.lines == [1, 3]
    again = parse_dataset(encode_items(dataset.items).decode().splitlines())
    assert again.sha256 == dataset.sha256
    assert item_turns(dataset.items[0]) == [Turn(role="user", content="안녕하세요 🙂")]
    chat = item_turns(dataset.items[1])
    assert chat[1].content == "Hi there"
    assert chat[1].parts is not None


def test_every_bad_line_is_named_with_its_field_and_nothing_is_returned(tmp_path: Path) -> None:
    lines = [
        {"id": "ok", "prompt": "fine"},
        "{not json",
        "[1, 2]",
        {"prompt": "no id"},
        {"id": 7, "prompt": "id is a number"},
        {"id": "both", "prompt": "p", "messages": [{"role": "user", "content": "m"}]},
        {"id": "neither"},
        {"id": "ok", "prompt": "duplicate id"},
        {"id": "role", "messages": [{"role": "robot", "content": "hi"}]},
        {
            "id": "last",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        },
        {
            "id": "sys",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
            ],
        },
        {"id": "typo", "prompt": "p", "expectd": "x"},
        {"id": "scorer", "prompt": "p", "scorers": [{"type": "regexp", "pattern": "x"}]},
        {"id": "param", "prompt": "p", "scorers": [{"type": "regex", "patern": "x"}]},
        {"id": "regex", "prompt": "p", "scorers": [{"type": "regex", "pattern": "(unclosed"}]},
        {"id": "exact", "prompt": "p", "scorers": [{"type": "exact_match"}]},
        {
            "id": "twice",
            "prompt": "p",
            "expected": "e",
            "scorers": [{"type": "contains", "value": "a"}, {"type": "contains", "value": "b"}],
        },
        {
            "id": "callable",
            "prompt": "p",
            "scorers": [{"type": "python", "callable": "nowhere.fn"}],
        },
        {"id": "blank", "prompt": "   "},
    ]
    with pytest.raises(DatasetError) as caught:
        load_dataset(write_jsonl(tmp_path / "bad.jsonl", lines))
    found = {(error.line, error.field) for error in caught.value.errors}
    assert found == {
        (2, None),
        (3, None),
        (4, None),  # a missing required field is reported by msgspec without a path
        (5, "id"),
        (6, None),
        (7, None),
        (8, "id"),
        (9, "messages[0].role"),
        (10, "messages[1].role"),
        (11, "messages[1].role"),
        (12, None),
        (13, "scorers[0].type"),
        (14, "scorers[0]"),  # an unknown field is reported at its object
        (15, "scorers[0].pattern"),
        (16, "scorers[0].expected"),
        (17, "scorers[1].name"),
        (18, "scorers[0].callable"),
        (19, "prompt"),
    }
    by_line = {error.line: error for error in caught.value.errors}
    assert "id" in by_line[4].message
    assert "'ok' is also the id on line 1" in by_line[8].message
    assert "expectd" in by_line[12].message
    assert "patern" in by_line[14].message
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}: 18 problem(s), nothing was run:")
    assert "line 9, messages[0].role: Invalid enum value 'robot'" in message
    assert caught.value.code == "invalid_dataset"


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no items"):
        load_dataset(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(InvalidInputError, match="no dataset at"):
        load_dataset(tmp_path / "missing.jsonl")


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    assert caught.value.errors[0].line == 2


def test_items_written_out_omit_what_they_do_not_set() -> None:
    item = DatasetItem(
        id="x", messages=[DatasetMessage(role="user", content="서울?")], expected="서울"
    )
    assert encode_items([item]) == (
        '{"id":"x","messages":[{"role":"user","content":"서울?"}],"expected":"서울"}\n'.encode()
    )


NUL = "\x00"
TEXT_PART = {"type": "text", "text": "hi"}

# (a line, the field its error names): every place a dataset carries text or JSON.
REFUSED_LINES = [
    ({"id": f"a{NUL}", "prompt": "p"}, "id"),
    ({"id": "a", "prompt": f"p{NUL}"}, "prompt"),
    ({"id": "a", "messages": [{"role": "user", "content": f"x{NUL}"}]}, "messages[0].content"),
    (
        {"id": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": NUL}]}]},
        "messages[0].content[0].text",
    ),
    (
        {"id": "a", "messages": [{"role": "user", "content": [{**TEXT_PART, f"k{NUL}": 1}]}]},
        "messages[0].content[0]",
    ),
    (
        {"id": "a", "messages": [{"role": "user", "content": "x", "name": f"n{NUL}"}]},
        "messages[0].name",
    ),
    ({"id": "a", "prompt": "p", "expected": f"e{NUL}"}, "expected"),
    ({"id": "a", "prompt": "p", "metadata": {"m": ["ok", NUL]}}, "metadata.m[1]"),
    ({"id": "a", "prompt": "p", "metadata": {"n": 2**64}}, "metadata.n"),
    (
        {"id": "a", "prompt": "p", "scorers": [{"type": "contains", "value": NUL}]},
        "scorers[0].value",
    ),
    (
        {
            "id": "a",
            "prompt": "p",
            "scorers": [{"type": "python", "callable": "m.f", "params": {"k": NUL}}],
        },
        "scorers[0].params.k",
    ),
    (
        {"id": "a", "prompt": "p", "scorers": [{"type": "contains", "value": "x", "name": "n\n"}]},
        "scorers[0].name",
    ),
    ({"id": "a", "prompt": "x" * 400_001}, "prompt"),
    ({"id": "a", "messages": [{"role": "user", "content": "x" * 400_001}]}, "messages[0].content"),
    (
        {
            "id": "a",
            "messages": [
                {"role": "assistant", "content": "x" * 400_001},
                {"role": "user", "content": "q"},
            ],
        },
        "messages[0].content",
    ),
]


@pytest.mark.parametrize(("line", "field"), REFUSED_LINES)
def test_what_the_api_refuses_a_dataset_refuses_naming_its_line_and_field(
    tmp_path: Path, line: dict[str, Any], field: str
) -> None:
    """A NUL anywhere, an integer beyond 64 bits, a turn longer than a send may be: refused
    by the checks an HTTP body gets, with the line and the field, before anything runs."""
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "fine", "prompt": "ok"}, line])
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    assert [(error.line, error.field) for error in caught.value.errors] == [(2, field)]
    assert f"line 2, {field}: " in str(caught.value)


def test_a_turn_is_bounded_by_the_deployments_message_limit(tmp_path: Path) -> None:
    """``max_message_chars`` is SWITCHBOARD_MAX_MESSAGE_CHARS: the limit a send has."""
    parts = [{"type": "text", "text": "12345"}, {"type": "image_url", "image_url": {}}, TEXT_PART]
    lines = [
        {"id": "short", "prompt": "x" * 10},
        {"id": "long", "prompt": "x" * 11},
        {
            "id": "chat",
            "messages": [{"role": "system", "content": "y" * 11}, {"role": "user", "content": "q"}],
        },
        {"id": "parts", "messages": [{"role": "user", "content": [*parts, TEXT_PART, TEXT_PART]}]},
        {"id": "fits", "messages": [{"role": "user", "content": parts}]},
        {
            "id": "history",  # a reply is the model's: bounded by the ceiling only
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "z" * 1000},
                {"role": "user", "content": "q"},
            ],
        },
    ]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, max_message_chars=10)
    found = [(error.line, error.field, error.message) for error in caught.value.errors]
    limit = "the limit is 10 (SWITCHBOARD_MAX_MESSAGE_CHARS)"
    assert found == [
        (2, "prompt", f"is 11 characters; {limit}"),
        (3, "messages[0].content", f"is 11 characters; {limit}"),
        (4, "messages[0].content", f"is 11 characters; {limit}"),
    ]
    assert len(load_dataset(path).items) == 6  # the ceiling of the setting by default


@pytest.mark.parametrize("depth", [33, 10_000, 100_000])
def test_json_nested_too_deep_is_a_line_error_not_a_crash(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    path = tmp_path / "deep.jsonl"
    path.write_text(
        f'{{"id": "a", "prompt": "p"}}\n{{"id": "b", "prompt": "p", "metadata": {{"m": {nested}}}}}\n'
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    (error,) = caught.value.errors
    assert error.line == 2
    assert "deeper than 32 levels" in error.message or "nested too deeply" in error.message


@pytest.mark.parametrize(
    "separator", ["\u2028", "\u2029", "\u0085", "\x1c", "\x1d", "\x1e", "\r", "\x0b", "\x0c"]
)
def test_line_separators_inside_a_record_keep_it_one_line(tmp_path: Path, separator: str) -> None:
    """JSON Lines end at \\n only: what ``str.splitlines`` also splits at (U+2028, U+2029,
    U+0085, ...) is text inside a record, as written by ``encode_items``."""
    items = [
        DatasetItem(id="a", prompt=f"one{separator}two", expected=f"x{separator}"),
        DatasetItem(id="b", messages=[DatasetMessage(role="user", content=f"{separator}q")]),
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(encode_items(items))
    assert load_dataset(path).items == items
    assert load_dataset(path).lines == [1, 2]


def test_a_byte_order_mark_at_the_start_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "prompt": "p"}\r\n\r\n{"id": "b", "prompt": "q"}\r\n'
    )
    dataset = load_dataset(path)
    assert [item.id for item in dataset.items] == ["a", "b"]
    assert dataset.lines == [1, 3]
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b'{"id": "a", "prompt": "p"}\n{"id": "b", "prompt": "q"}\n')
    assert load_dataset(plain).sha256 == dataset.sha256
    # Only at the start: elsewhere it is not JSON's whitespace.
    inside = tmp_path / "inside.jsonl"
    inside.write_bytes(b'{"id": "a", "prompt": "p"}\n\xef\xbb\xbf{"id": "b", "prompt": "q"}\n')
    with pytest.raises(DatasetError) as caught:
        load_dataset(inside)
    assert [error.line for error in caught.value.errors] == [2]


def test_a_dataset_is_written_atomically_and_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text("old\n")
    path.chmod(0o644)
    items = [DatasetItem(id="a", prompt="p\u2028q")]
    write_dataset(path, items)
    assert path.read_bytes() == encode_items(items)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]

    def failing() -> Iterator[DatasetItem]:
        yield DatasetItem(id="b", prompt="p")
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        write_dataset(path, failing())
    assert path.read_bytes() == encode_items(items)  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


@pytest.mark.parametrize("engine", ["postgres", "sqlite"])
async def test_flows_run_refuses_a_hostile_dataset_before_any_run_on_either_engine(
    tmp_path: Path, engine: str
) -> None:
    """What crashed an evaluation on PostgreSQL (a NUL) or was stored on SQLite (a NUL, a
    20 MB prompt): a usage error naming each line and field, and nothing written."""
    url = (
        await create_postgres_database("switchboard_datasets")
        if engine == "postgres"
        else sqlite_url(tmp_path, "datasets.sqlite")
    )
    try:
        assert switchboard_cli(url, "db", "migrate").returncode == 0
        lines = [
            {"id": "ok", "prompt": "fine"},
            *(line for line, _ in REFUSED_LINES if "x" * 400_001 not in str(line)),
            {"id": "huge", "prompt": "x" * 20_000_000},
        ]
        path = write_jsonl(tmp_path / "hostile.jsonl", lines)
        result = switchboard_cli(
            url, "flows", "run", "evaluate", "--dataset", str(path), "--config", "any"
        )
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert "\x00" not in result.stderr
        expected = [field for line, field in REFUSED_LINES if "x" * 400_001 not in str(line)]
        for number, field in enumerate([*expected, "prompt"], start=2):
            assert f"line {number}, {field}: " in result.stderr, (number, field)
        # The deployment's own limit, as a send has it.
        short = write_jsonl(tmp_path / "short.jsonl", [{"id": "a", "prompt": "x" * 1001}])
        limited = switchboard_cli(
            url,
            "flows", "run", "evaluate", "--dataset", str(short), "--config", "any",
            env={"SWITCHBOARD_MAX_MESSAGE_CHARS": "1000"},
        )  # fmt: skip
        assert limited.returncode == 2, limited.stderr[-3000:]
        assert "line 1, prompt: is 1001 characters; the limit is 1000" in limited.stderr
        use_engine(engine_from_url(url))
        assert await EvalRun.count() == 0
        assert await Message.count() == 0
    finally:
        if engine == "postgres":
            await drop_postgres_database(url)
