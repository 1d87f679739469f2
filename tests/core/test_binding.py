"""Undoing a runtime's binding, in the context that made it or in another one."""

from __future__ import annotations

import contextvars

from functions.core.binding import unbind


def test_unbinding_goes_back_to_the_value_before_in_either_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("binding_test", default="none")
    outer = var.set("outer")
    token = var.set("bound")
    # A teardown in another context (a copy taken while bound) cannot reset the token
    # there: it goes back to the value before instead of raising.
    elsewhere = contextvars.copy_context()
    elsewhere.run(unbind, var, token, "none")
    assert elsewhere[var] == "outer"
    assert var.get() == "bound"
    unbind(var, token, "none")
    assert var.get() == "outer"
    # A token set on the default goes back to the default given.
    first = contextvars.copy_context()

    def bind_then_unbind_elsewhere() -> None:
        fresh: contextvars.ContextVar[str] = contextvars.ContextVar("binding_fresh")
        made = fresh.set("bound")
        other = contextvars.copy_context()
        other.run(unbind, fresh, made, "off")
        assert other[fresh] == "off"

    first.run(bind_then_unbind_elsewhere)
    unbind(var, outer, "none")
    assert var.get() == "none"
