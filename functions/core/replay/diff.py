"""How two replies differ, word by word: one similarity and one diff, from the same match.

Text is split into words (a run of letters and digits), and single characters for what is
written without spaces (CJK, Hangul and kana, one per character), punctuation and emoji;
each keeps the whitespace before it, so the pieces join back to the text exactly. The two
word lists are matched with :class:`difflib.SequenceMatcher` (no junk heuristic, so long
replies are not matched loosely); the similarity is that match's ratio, ``2 * matched /
(words in both)``, from 0 (nothing in common) to 1 (the same words in the same order,
whatever the spacing). The highlighted diff shows exactly the words the ratio counted as
changed, so the number and the picture never disagree.
"""

from __future__ import annotations

import difflib
import html
import re
from typing import Literal

import msgspec

# Scripts written without spaces: one piece per character.
_CJK = (
    "\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
)
_PIECE = re.compile(rf"\s*(?:[^\W{_CJK}]+|\S)|\s+")

Op = Literal["equal", "delete", "insert"]


class DiffPiece(msgspec.Struct, frozen=True):
    """A run of text that both replies share (``equal``), or only the original
    (``delete``) or only the replay (``insert``) has."""

    op: Op
    text: str


def pieces(text: str) -> list[str]:
    """``text`` as words and single characters, each with the whitespace before it."""
    return _PIECE.findall(text)


def _matcher(original: list[str], replayed: list[str]) -> difflib.SequenceMatcher[str]:
    return difflib.SequenceMatcher(
        None, [p.strip() for p in original], [p.strip() for p in replayed], autojunk=False
    )


def similarity(original: str, replayed: str) -> float:
    """Word-level similarity from 0 to 1 (see the module docstring); two empty texts are 1."""
    left, right = _words(original), _words(replayed)
    if not left and not right:
        return 1.0
    return round(_matcher(left, right).ratio(), 6)


def _words(text: str) -> list[str]:
    return [piece for piece in pieces(text) if piece.strip()]


def word_diff(original: str, replayed: str) -> list[DiffPiece]:
    """The replies as runs of shared, removed and added words, in reading order.

    Joining the ``equal`` and ``insert`` runs gives the replay back exactly; ``equal`` and
    ``delete`` give the original's words (shared words keep the replay's spacing).
    """
    left, right = pieces(original), pieces(replayed)
    found: list[DiffPiece] = []

    def add(op: Op, text: str) -> None:
        if not text:
            return
        if found and found[-1].op == op:
            found[-1] = DiffPiece(op, found[-1].text + text)
        else:
            found.append(DiffPiece(op, text))

    for tag, a0, a1, b0, b1 in _matcher(left, right).get_opcodes():
        if tag == "equal":
            # Shared words in the replay's spacing (spacing alone is not a change).
            add("equal", "".join(right[b0:b1]))
            continue
        add("delete", "".join(left[a0:a1]))
        add("insert", "".join(right[b0:b1]))
    return found


def diff_html(original: str, replayed: str) -> tuple[str, str]:
    """The two replies as HTML, side by side: removed words struck through in red on the
    original's side, added words in green on the replay's; text escaped, line breaks kept.
    """
    left: list[str] = []
    right: list[str] = []
    for piece in word_diff(original, replayed):
        text = html.escape(piece.text).replace("\n", "<br>")
        if piece.op == "equal":
            left.append(text)
            right.append(text)
        elif piece.op == "delete":
            left.append(f'<del style="{_DELETED}">{text}</del>')
        else:
            right.append(f'<ins style="{_INSERTED}">{text}</ins>')
    return "".join(left), "".join(right)


_DELETED = "background:#fdd;color:#900;text-decoration:line-through"
_INSERTED = "background:#dfd;color:#060;text-decoration:none"
