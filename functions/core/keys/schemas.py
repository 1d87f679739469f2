"""API keys as callers and operators see them. The secret appears only in ``ApiKeyCreated``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from functions.core.schemas import Input, Output

Scope = Literal["admin", "chat"]
KeyName = Annotated[
    str, Meta(min_length=1, max_length=100, pattern=r"\S", examples=["billing-service"])
]


class ApiKeyCreate(Input, kw_only=True):
    name: KeyName
    scopes: Annotated[list[Scope], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["chat"]
    )


class ApiKeyOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyOut, kw_only=True):
    """Returned once, at creation: ``secret`` is never stored and cannot be shown again."""

    secret: str


class Principal(msgspec.Struct, frozen=True):
    """The authenticated caller of a request."""

    key_id: uuid.UUID
    name: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes
