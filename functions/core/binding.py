"""Undoing what a runtime bound to a context (its engine, its key cache)."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TypeVar

T = TypeVar("T")


def unbind(var: ContextVar[T], token: Token[T], default: T) -> None:
    """Undo ``token = var.set(...)``.

    Undone from another context than it was set in (a test fixture's teardown), that
    context can only go back to the value before; the one it was set in ends with its task.
    """
    try:
        var.reset(token)
    except ValueError:
        var.set(default if token.old_value is Token.MISSING else token.old_value)
