"""The OpenAI-shaped ids round-trip to their rows and refuse everything else alike."""

from __future__ import annotations

from uuid import uuid4

import pytest

from functions.openai.ids import IdKind, format_id, parse_id


@pytest.mark.parametrize("kind", list(IdKind))
def test_an_id_names_its_row(kind: IdKind) -> None:
    row = uuid4()
    text = format_id(kind, row)
    assert text.startswith(kind.value)
    assert parse_id(kind, text) == row


@pytest.mark.parametrize(
    "text",
    [
        "",
        "conv_",
        "conv_xyz",
        "conv_" + "A" * 32,  # upper case is not what we hand out
        "conv_" + "a" * 31,
        "conv_" + "a" * 33,
        "resp_" + "a" * 32,  # another kind's prefix
        "conv_" + "a" * 32 + "\n",
    ],
)
def test_anything_else_names_nothing(text: str) -> None:
    assert parse_id(IdKind.CONVERSATION, text) is None
