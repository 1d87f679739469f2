"""Which configuration answers a send: the rule, once, over a cached view of configurations.

A send names its target: a configuration (optionally a pinned, immutable version), a
model served upstream with no configuration (the OpenAI door), or neither, meaning the
conversation's configuration or else the default. :class:`ConfigView` answers from memory
and remembers the configuration epoch it read under; the claim checks that epoch (and the
conversation's config name) under its lock and refuses a stale view, and the sender then
reads again. Configuration writes are rare, so a send costs no configuration query.
"""

from __future__ import annotations

import msgspec

from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigOut


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """What answers a send (see the module docstring)."""

    config: str | None = None
    version: int | None = None
    model: str | None = None


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    config: LLMConfigOut | None
    model: str | None
    epoch: int


class ConfigView:
    """This process's memory of configurations, valid for one configuration epoch."""

    def __init__(self) -> None:
        self._epoch: int | None = None
        # Name (None: the default) to what ``configs.resolve_config`` answered.
        self._resolved: dict[str | None, LLMConfigOut] = {}

    def invalidate(self) -> None:
        """Forget everything; the next resolve reads the epoch and what it needs again."""
        self._epoch = None
        self._resolved.clear()

    async def resolve(self, target: Target, conversation_config: str | None) -> Resolved:
        """The configuration (or bare model) for a send; raises the configs' own errors."""
        if self._epoch is None:
            # The epoch first: a write landing after it makes the claim refuse this view.
            self._epoch = await configs.read_epoch()
        epoch = self._epoch
        if target.config is None and target.model is not None:
            return Resolved(config=None, model=target.model, epoch=epoch)
        name = target.config if target.config is not None else conversation_config
        if name is not None and target.version is not None:
            # Versions are immutable: a pinned one is what it was, archived or not.
            config = await configs.get_config(name, target.version)
        elif name in self._resolved:
            config = self._resolved[name]
        else:
            config = self._resolved[name] = await configs.resolve_config(name)
        return Resolved(config=config, model=config.model, epoch=epoch)
