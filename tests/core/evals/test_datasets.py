"""Reading datasets: good files, and bad lines named by line number and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from functions.core.errors import InvalidInputError
from functions.core.evals.datasets import (
    DatasetError,
    encode_items,
    item_turns,
    load_dataset,
    parse_dataset,
)
from functions.core.evals.schemas import DatasetItem, DatasetMessage
from functions.core.messages.schemas import Turn
from tests.core.evals.conftest import write_jsonl

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
