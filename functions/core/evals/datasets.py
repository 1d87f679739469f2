"""Datasets: JSONL files of items, read whole and checked before anything runs.

One item per line: ``id``, ``messages`` (a chat) or ``prompt`` (a string), optional
``expected``, ``scorers`` and ``metadata`` (:class:`DatasetItem`). Every problem in the
file is reported at once, each naming its line and field, and nothing runs until there
are none: a run of a thousand items should not stop at item 600 over a typo.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.errors import InvalidInputError
from functions.core.evals.schemas import DatasetItem, scorer_name
from functions.core.evals.scorers import check_spec
from functions.core.messages.schemas import Turn

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Past this many, the rest of a broken file is not worth reading.
MAX_REPORTED_ERRORS = 50
_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


class LineError(msgspec.Struct, frozen=True, kw_only=True):
    """One problem of a dataset file: where, which field, what."""

    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"


class DatasetError(InvalidInputError):
    """A dataset that cannot run; ``errors`` lists every problem found (line and field)."""

    code = "invalid_dataset"

    def __init__(self, source: str, errors: Sequence[LineError]) -> None:
        shown = "\n".join(f"  {error}" for error in errors)
        more = "" if len(errors) < MAX_REPORTED_ERRORS else "\n  (stopped reading there)"
        super().__init__(
            f"{source}: {len(errors)} problem(s), nothing was run:\n{shown}{more}",
            details={"source": source, "errors": [msgspec.to_builtins(e) for e in errors]},
        )
        self.errors = list(errors)


class Dataset(msgspec.Struct, frozen=True, kw_only=True):
    """A checked dataset: its items in file order and the hash a run is pinned to."""

    source: str
    items: list[DatasetItem]
    sha256: str
    # The file line of each item (blank lines are skipped), for messages about it.
    lines: list[int]


_decode_line = msgspec.json.Decoder().decode


def _field_of(error: msgspec.ValidationError) -> tuple[str | None, str]:
    """``$.scorers[0].type`` as ``scorers[0].type``, and the message without the path."""
    text = str(error)
    found = _AT_PATH.search(text)
    if found is None:
        return None, text
    return found["path"].lstrip(".") or None, text[: found.start()]


def _check_item(item: DatasetItem) -> list[tuple[str | None, str]]:
    """What msgspec's types cannot say: one of messages/prompt, names, expected values."""
    problems: list[tuple[str | None, str]] = []
    if not item.id.strip():
        problems.append(("id", "is blank"))
    if (item.messages is None) == (item.prompt is None):
        problems.append((None, "give exactly one of messages (a chat) or prompt (a string)"))
    if item.prompt is not None and not item.prompt.strip():
        problems.append(("prompt", "is blank"))
    if item.messages is not None:
        if not item.messages:
            problems.append(("messages", "is empty"))
        elif item.messages[-1].role not in ("user", "tool"):
            problems.append(
                (f"messages[{len(item.messages) - 1}].role", "the last turn must be user or tool")
            )
        for index, turn in enumerate(item.messages):
            if turn.role in ("system", "developer") and index > 0:
                problems.append((f"messages[{index}].role", "a system turn may only come first"))
    seen: set[str] = set()
    for index, spec in enumerate(item.scorers):
        name = scorer_name(spec)
        if name in seen:
            problems.append((f"scorers[{index}].name", f"two scorers are named {name!r}"))
        seen.add(name)
    for index, spec in enumerate(item.scorers):
        for field, message in check_spec(spec, item.expected):
            problems.append((f"scorers[{index}]" + (f".{field}" if field else ""), message))
    return problems


def parse_dataset(lines: Iterable[str], source: str = "<dataset>") -> Dataset:
    """Read JSONL text into a :class:`Dataset`; raises :class:`DatasetError` naming every
    bad line and field. Blank lines are skipped; ids must be unique."""
    items: list[DatasetItem] = []
    numbers: list[int] = []
    errors: list[LineError] = []
    first_line: dict[str, int] = {}
    digest = hashlib.sha256()
    for number, line in enumerate(lines, start=1):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        if not line.strip():
            continue
        try:
            raw: Any = _decode_line(line)
        except msgspec.DecodeError as exc:
            errors.append(LineError(line=number, field=None, message=f"not JSON: {exc}"))
            continue
        if not isinstance(raw, dict):
            kind = type(raw).__name__
            errors.append(LineError(line=number, field=None, message=f"a {kind}, not an object"))
            continue
        try:
            item = msgspec.convert(raw, DatasetItem)
        except msgspec.ValidationError as exc:
            field, message = _field_of(exc)
            errors.append(LineError(line=number, field=field, message=message))
            continue
        for field, message in _check_item(item):
            errors.append(LineError(line=number, field=field, message=message))
        if item.id in first_line:
            errors.append(
                LineError(
                    line=number,
                    field="id",
                    message=f"{item.id!r} is also the id on line {first_line[item.id]}",
                )
            )
        else:
            first_line[item.id] = number
        # The hash is of the items as read, so reformatting the file does not change it.
        digest.update(msgspec.json.encode(item) + b"\n")
        items.append(item)
        numbers.append(number)
    if not errors and not items:
        errors.append(LineError(line=0, field=None, message="the dataset has no items"))
    if errors:
        raise DatasetError(source, errors)
    return Dataset(source=source, items=items, sha256=digest.hexdigest(), lines=numbers)


def load_dataset(path: str | Path) -> Dataset:
    """Read and check a JSONL file (UTF-8); see :func:`parse_dataset`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(
            f"no dataset at {path}", details={"field": "dataset", "path": str(path)}
        ) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(
            str(path), [LineError(line=text_line(path, exc.start), field=None, message=str(exc))]
        ) from None
    return parse_dataset(text.splitlines(), source=str(path))


def text_line(path: Path, offset: int) -> int:
    """The line number of a byte offset (for a file that is not UTF-8)."""
    return path.read_bytes()[:offset].count(b"\n") + 1


def encode_items(items: Iterable[DatasetItem]) -> bytes:
    """Items as JSONL, one per line, as :func:`parse_dataset` reads them back."""
    encoder = msgspec.json.Encoder()
    return b"".join(encoder.encode(item) + b"\n" for item in items)


def item_turns(item: DatasetItem) -> list[Turn]:
    """An item's chat as turns (a ``prompt`` is one user turn)."""
    if item.messages is None:
        return [Turn(role="user", content=item.prompt or "")]
    turns = []
    for message in item.messages:
        if isinstance(message.content, str):
            turns.append(Turn(role=message.role, content=message.content, name=message.name))
        else:
            text = "".join(
                str(part.get("text", "")) for part in message.content if part.get("type") == "text"
            )
            turns.append(
                Turn(role=message.role, content=text, parts=message.content, name=message.name)
            )
    return turns
