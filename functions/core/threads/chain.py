"""The chained hash of a history: how a resent conversation is recognised in one lookup.

Each stored turn carries ``h_i = H(h_{i-1} || canonical(turn_i))`` (``message.chain_hash``),
where ``h_0`` is salted with the owner's key id, so two keys' identical histories never
share a hash. A request's history is stored in a conversation exactly when the hash of
its prefix is stored there: finding it is an index lookup on ``chain_hash``, never a scan.

The canonical form of a turn keeps what the model sees and drops what clients change when
they send a reply back:

- the role, and the text as the door stores it (``Turn.content``: a string, or the text
  parts joined with nothing between them, the OpenAI door's rule). A turn sent as text
  parts hashes like the same text sent as a string; its non-text parts (images, audio)
  count as sent;
- ``name``, and a tool turn's ``tool_call_id``;
- an assistant turn's tool calls as (id, function name, arguments): the ``type`` is
  dropped, and arguments that are JSON count by their value, not their spacing or
  escapes (LangChain, say, parses them and sends ``json.dumps`` of the result back);
- ``None`` and ``""`` content alike (an assistant turn that only calls tools).

BLAKE2b with a 16-byte digest: a few hundred nanoseconds per turn, and 16 bytes a row in
the index (``bytea``/``BLOB``; hex text would double it).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.messages.schemas import Turn

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

DIGEST_SIZE = 16
# Changing the canonical form changes every hash: a new personalisation keeps old and new
# hashes apart (no history would match across the change, none would match wrongly).
_PERSON = b"switchboard-th1"
_encode = msgspec.msgpack.Encoder().encode
_json_decode = msgspec.json.decode
_json_encode = msgspec.json.encode
# Copied for each link, never updated itself: a copy costs a third less than a new hasher
# (whose keyword arguments are parsed every time).
_LINK_HASHER = hashlib.blake2b(digest_size=DIGEST_SIZE)


def root(owner: uuid.UUID) -> bytes:
    """``h_0`` of ``owner``'s histories: the empty history, salted with the key's id."""
    return hashlib.blake2b(b"", digest_size=DIGEST_SIZE, salt=owner.bytes, person=_PERSON).digest()


def _arguments(arguments: Any) -> Any:
    """Arguments by their JSON value when they are JSON (spacing and escapes vary by
    client), else as sent (a call cut short may hold half an object)."""
    if not isinstance(arguments, str):
        return _json_encode(arguments)
    try:
        return _json_encode(_json_decode(arguments))
    except msgspec.DecodeError:
        return arguments


def _calls(calls: list[dict[str, Any]] | None) -> tuple[tuple[Any, Any, Any], ...] | None:
    if not calls:
        return None
    canonical = []
    for call in calls:
        function = call.get("function") or {}
        canonical.append(
            (call.get("id"), function.get("name"), _arguments(function.get("arguments")))
        )
    return tuple(canonical)


def canonical(turn: Turn) -> bytes:
    """The bytes a turn contributes to the chain (see the module's rules)."""
    media = None
    if turn.parts:
        media = [part for part in turn.parts if part.get("type") != "text"] or None
    calls = turn.tool_calls
    return _encode(
        (
            turn.role,
            turn.content or "",
            media,
            turn.name,
            _calls(calls) if calls else None,
            turn.tool_call_id,
        )
    )


def link(previous: bytes, turn: Turn) -> bytes:
    """``h_i`` from ``h_{i-1}`` and turn ``i``."""
    hasher = _LINK_HASHER.copy()
    hasher.update(previous + canonical(turn))
    return hasher.digest()


def chain(owner: uuid.UUID, turns: Sequence[Turn]) -> list[bytes]:
    """The hash of every prefix of ``turns`` (``h_1 .. h_n``), in order."""
    hashes: list[bytes] = []
    append = hashes.append
    previous = root(owner)
    copy, encode = _LINK_HASHER.copy, _encode
    for turn in turns:
        # ``link`` and ``canonical`` inlined: a resent history is hashed whole on every
        # request. A text turn (nearly all of them) has no media and no calls.
        if turn.parts or turn.tool_calls:
            data = canonical(turn)
        else:
            data = encode((turn.role, turn.content or "", None, turn.name, None, turn.tool_call_id))
        hasher = copy()
        hasher.update(previous + data)
        previous = hasher.digest()
        append(previous)
    return hashes


def reply_link(
    parent: bytes | None, content: str, tool_calls: list[dict[str, Any]] | None
) -> bytes | None:
    """A completed reply's hash, chained onto its send's last (None: not threaded)."""
    if parent is None:
        return None
    return link(parent, Turn(role="assistant", content=content, tool_calls=tool_calls))
