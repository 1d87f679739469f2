"""Datasets: JSONL files of items, read whole and checked before anything runs.

One item per line: ``id``, ``messages`` (a chat) or ``prompt`` (a string), optional
``expected``, ``scorers`` and ``metadata`` (:class:`DatasetItem`). Every problem in the
file is reported at once, each naming its line and field, and nothing runs until there
are none: a run of a thousand items should not stop at item 600 over a typo.

An item is checked as the HTTP API checks a send: its fields are
:class:`~functions.core.schemas.FrozenInput` (no NUL, no integer beyond 64 bits, JSON at most
:data:`~functions.core.schemas.MAX_JSON_DEPTH` deep) and the text of each turn a user
could send is within SWITCHBOARD_MAX_MESSAGE_CHARS (``max_message_chars``; a reply in an
item's history within the ceiling of that setting), so what the API refuses cannot be
sent, or stored, through an evaluation.

Lines end at ``\\n`` only (JSON Lines): a record may hold U+2028, U+2029 or U+0085, which
``str.splitlines`` would also split at. A UTF-8 byte order mark at the start is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.chat.schemas import MAX_CONTENT_CHARS, message_chars_problem
from functions.core.errors import InvalidInputError
from functions.core.evals.schemas import DatasetItem, DatasetMessage, scorer_name
from functions.core.evals.scorers import check_spec
from functions.core.messages.schemas import Turn
from functions.core.schemas import MAX_JSON_DEPTH, InputValueError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Past this many, the rest of a broken file is not worth reading.
MAX_REPORTED_ERRORS = 50
_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`\Z")


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
# JSON's whitespace: a line of only these is blank (U+2028 and the like are not).
_JSON_BLANK = " \t\r\n"


def _field_of(error: msgspec.ValidationError) -> tuple[str | None, str]:
    """``$.scorers[0].type`` as ``scorers[0].type``, and the message without the path; a
    value an :class:`~functions.core.schemas.Input` check refused is named in full
    (``messages[0].content``)."""
    text = str(error)
    found = _AT_PATH.search(text)
    path, message = (
        (None, text) if found is None else (found["path"].lstrip("."), text[: found.start()])
    )
    cause = error.__cause__
    if isinstance(cause, InputValueError):
        return (f"{path}.{cause.field}" if path else cause.field), cause.problem
    return path or None, message


def _text_of(message: DatasetMessage) -> str:
    """A turn's text: its content, or its text parts joined (as the model is sent it)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(
        str(part.get("text", "")) for part in message.content if part.get("type") == "text"
    )


def _check_item(item: DatasetItem, max_message_chars: int) -> list[tuple[str | None, str]]:
    """What msgspec's types cannot say: one of messages/prompt, names, expected values,
    and each turn's length (as a send's)."""
    problems: list[tuple[str | None, str]] = []
    if not item.id.strip():
        problems.append(("id", "is blank"))
    if (item.messages is None) == (item.prompt is None):
        problems.append((None, "give exactly one of messages (a chat) or prompt (a string)"))
    if item.prompt is not None and not item.prompt.strip():
        problems.append(("prompt", "is blank"))
    return problems + _check_turns(item, max_message_chars) + _check_scorers(item)


def _check_turns(item: DatasetItem, max_message_chars: int) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    # What a user could send is bounded as a send is; a reply in the item's history is the
    # model's, which the setting does not bound in chat either (a dataset built from
    # history holds them), so only by the ceiling any setting may have.
    texts = [("prompt", item.prompt or "", max_message_chars)] + [
        (
            f"messages[{index}].content",
            _text_of(message),
            MAX_CONTENT_CHARS if message.role == "assistant" else max_message_chars,
        )
        for index, message in enumerate(item.messages or [])
    ]
    for where, text, limit in texts:
        if (too_long := message_chars_problem(text, limit)) is not None:
            problems.append((where, too_long))
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
    return problems


def _check_scorers(item: DatasetItem) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
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


def parse_dataset(
    lines: Iterable[str],
    source: str = "<dataset>",
    *,
    max_message_chars: int = MAX_CONTENT_CHARS,
) -> Dataset:
    """Read JSONL lines (see :func:`dataset_lines`) into a :class:`Dataset`; raises
    :class:`DatasetError` naming every bad line and field. Blank lines are skipped; ids
    must be unique; no turn's text is longer than ``max_message_chars`` (the deployment's
    SWITCHBOARD_MAX_MESSAGE_CHARS)."""
    items: list[DatasetItem] = []
    numbers: list[int] = []
    errors: list[LineError] = []
    first_line: dict[str, int] = {}
    digest = hashlib.sha256()
    for number, line in enumerate(lines, start=1):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        if not line.strip(_JSON_BLANK):
            continue
        try:
            raw: Any = _decode_line(line)
        except msgspec.DecodeError as exc:
            errors.append(LineError(line=number, field=None, message=f"not JSON: {exc}"))
            continue
        except RecursionError:
            errors.append(
                LineError(
                    line=number,
                    field=None,
                    message=f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)",
                )
            )
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
        for field, message in _check_item(item, max_message_chars):
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


def dataset_lines(text: str) -> list[str]:
    """A JSONL text's lines: split at ``\\n`` only, a leading byte order mark skipped."""
    return text.removeprefix("\ufeff").split("\n")


def load_dataset(path: str | Path, *, max_message_chars: int = MAX_CONTENT_CHARS) -> Dataset:
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
    return parse_dataset(dataset_lines(text), source=str(path), max_message_chars=max_message_chars)


def text_line(path: Path, offset: int) -> int:
    """The line number of a byte offset (for a file that is not UTF-8)."""
    return path.read_bytes()[:offset].count(b"\n") + 1


def encode_items(items: Iterable[DatasetItem]) -> bytes:
    """Items as JSONL, one per line, as :func:`parse_dataset` reads them back (JSON
    escapes every ``\\n`` inside a record, so only the records' ends are ``\\n``)."""
    encoder = msgspec.json.Encoder()
    return b"".join(encoder.encode(item) + b"\n" for item in items)


def write_dataset(path: Path, items: Iterable[DatasetItem]) -> None:
    """Write ``items`` to ``path`` atomically, readable by the owner only (they are real
    conversations): a temporary file beside it, flushed to disk, renamed over it, so a
    reader, or a crash, sees the old file or the whole new one, never part of it."""
    data = encode_items(items)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself must survive a crash, not only the file's bytes.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def item_turns(item: DatasetItem) -> list[Turn]:
    """An item's chat as turns (a ``prompt`` is one user turn)."""
    if item.messages is None:
        return [Turn(role="user", content=item.prompt or "")]
    return [
        Turn(
            role=message.role,
            content=_text_of(message),
            parts=None if isinstance(message.content, str) else message.content,
            name=message.name,
        )
        for message in item.messages
    ]
