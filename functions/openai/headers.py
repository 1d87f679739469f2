"""What the door's sending routes read besides the body: the request headers they take, and
the length of a stored conversation's title. One definition for chat and legacy
completions (``app`` imports ``text_completions``, so neither can hold it for the other)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import HeaderParameter

from functions.core.schemas import END

TITLE_CHARS = 80
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+" + END,
        description="Retry safely, as on the chat API: the same key and body again return "
        "the first request's reply instead of storing it twice.",
    ),
]
