"""Which configuration a request's ``model`` names, remembered for a moment.

Most requests name the same few models, and most of those are not configurations at all
(a served model's name): asking the database every time would cost a round trip per
request for nothing. The door keeps what it found (a configuration or none) for
``ttl_s``. Only the door's own reading can be that old: whether ``model`` is a
configuration and its system prompt. The claim resolves the configuration's version,
model and sampling itself, under the configuration epoch, so a send never uses a version
replaced before it was claimed. A pinned ``name@version`` never changes and is kept as long.

One instance per app (on ``app.state``), so two apps or runtimes in a process never share it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from functions.core.configs import service as configs
from functions.core.errors import NotFoundError
from functions.core.keys import access as keys_access
from functions.core.keys.schemas import UNRESTRICTED
from functions.openai.chat_request import target_of

if TYPE_CHECKING:
    from litestar.datastructures import State

    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.keys.schemas import KeyAccess

TTL_S = 2.0
MAX_ENTRIES = 1024
_STATE_KEY = "openai_config_names"


class ConfigNames:
    """``model`` → the configuration it names (None: not a configuration), for ``ttl_s``."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self._ttl_s = ttl_s
        self._found: dict[str, tuple[float, LLMConfigOut | None]] = {}

    async def config_for(self, model: str, access: KeyAccess = UNRESTRICTED) -> LLMConfigOut | None:
        """The configuration ``model`` names (a pinned version must exist: 404), or None.

        ``access``: what the caller's key may use. Anything else is a 403 here, before a
        configuration or model outside its lists is looked up or asked of an upstream, so
        such a key cannot tell one that exists from one that does not."""
        if access.configs is not None:
            named = target_of(model)
            keys_access.require_named(
                access, config=named[0] if named else None, model=None if named else model
            )
        config = await self._cached(model)
        if not access.unrestricted:
            keys_access.require(
                access,
                config=config.name if config else None,
                model=config.model if config else model,
            )
        return config

    async def _cached(self, model: str) -> LLMConfigOut | None:
        now = time.monotonic()
        cached = self._found.get(model)
        if cached is not None and cached[0] > now:
            return cached[1]
        config = await _lookup(model)
        if len(self._found) >= MAX_ENTRIES:
            self._found.clear()  # a client cycling through names costs a lookup each, no more
        self._found[model] = (now + self._ttl_s, config)
        return config


async def _lookup(model: str) -> LLMConfigOut | None:
    named = target_of(model)
    if named is None:
        return None
    name, version = named
    if version is not None:
        return await configs.get_config(name, version)
    try:
        return await configs.resolve_config(name)
    except NotFoundError:
        return None


def config_names(state: State) -> ConfigNames:
    """The app's :class:`ConfigNames`, made on first use."""
    names = state.get(_STATE_KEY)
    if not isinstance(names, ConfigNames):
        names = state[_STATE_KEY] = ConfigNames()
    return names
