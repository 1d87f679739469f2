"""What a key may use, checked for every door: sends (the configuration or model they
resolve to), embeddings, and the model lists. The rule is :class:`KeyAccess.allows`; this
module turns a refusal into the error every door answers with (403
``model_not_allowed``), before anything is stored or sent upstream."""

from __future__ import annotations

from typing import TYPE_CHECKING

from functions.core.errors import ModelNotAllowedError

if TYPE_CHECKING:
    from functions.core.keys.schemas import KeyAccess


def require(access: KeyAccess, *, config: str | None, model: str | None) -> None:
    """Raise :class:`ModelNotAllowedError` unless ``access`` allows ``config`` (None: a
    bare model) of ``model``."""
    if access.allows(config, model):
        return
    if config is not None and access.configs is not None and config not in access.configs:
        what = f"configuration '{config}'"
    elif model is not None:
        what = f"model '{model}'"
    else:
        what = "a model without a configuration"
    raise ModelNotAllowedError(
        f"this API key may not use {what}: GET /v1/models lists what it may use, and an "
        "admin can change its list (PATCH /v1/keys/{id})",
        details={"field": "model"},
    )


def require_named(access: KeyAccess, *, config: str | None, model: str | None) -> None:
    """The check on what a send names, before it is resolved: a configuration (by name)
    or a bare model the key may not use is refused whether it exists or not, so a
    restricted key learns nothing of what is outside its lists."""
    if access.unrestricted:
        return
    if config is not None:
        if access.configs is not None and config not in access.configs:
            require(access, config=config, model=None)
    elif model is not None:
        require(access, config=None, model=model)
