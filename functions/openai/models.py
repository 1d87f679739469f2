"""``/v1/models``: the configurations (by name and by ``name@version``) and the models the
upstreams serve, as OpenAI's and vLLM's clients read a model list. A key with an access
list (``KeyAccess``) sees only what it may use: the rest is not listed and is a 404, as a
model that does not exist."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from functions.core.configs import service as configs
from functions.core.errors import NotFoundError
from functions.core.llm.errors import LLMError
from functions.openai.chat_request import target_of
from functions.openai.schemas import ModelList, ModelOut

if TYPE_CHECKING:
    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.keys.schemas import KeyAccess
    from functions.core.llm.client import LLMClient
    from functions.core.llm.schemas import ModelInfo

OWNER = "switchboard"


def config_model(config: LLMConfigOut, model_id: str, served: dict[str, ModelInfo]) -> ModelOut:
    info = served.get(config.model)
    return ModelOut(
        id=model_id,
        created=int(config.created_at.timestamp()),
        owned_by=OWNER,
        root=config.model,
        max_model_len=info.max_model_len if info else None,
        switchboard={
            "kind": "config",
            "name": config.name,
            "version": config.version,
            "model": config.model,
        },
    )


def upstream_model(info: ModelInfo, created: int) -> ModelOut:
    return ModelOut(
        id=info.id,
        created=created,
        owned_by=info.owned_by or "vllm",
        root=info.root,
        parent=info.parent,
        max_model_len=info.max_model_len,
        switchboard={"kind": "upstream", "upstreams": info.upstreams},
    )


async def served_models(llm: LLMClient | None) -> dict[str, ModelInfo]:
    """The models of the upstreams in rotation (those a health verdict marked down are
    not); none when no upstream answers, so the configurations are still listed."""
    if llm is None:
        return {}
    try:
        return {info.id: info for info in await llm.list_models()}
    except LLMError:
        return {}


async def list_models(llm: LLMClient | None, access: KeyAccess) -> ModelList:
    served = await served_models(llm)
    data: list[ModelOut] = []
    for config in await configs.list_configs():
        if access.allows(config.name, config.model):
            data.append(config_model(config, config.name, served))
            data.append(config_model(config, f"{config.name}@{config.version}", served))
    now = int(time.time())
    data += [upstream_model(info, now) for info in served.values() if access.allows(None, info.id)]
    return ModelList(data=data)


async def get_model(model_id: str, llm: LLMClient | None, access: KeyAccess) -> ModelOut:
    """One model by id: a configuration (``name``, ``name@version``) or a served model,
    if ``access`` allows it (else a 404, as an unknown one)."""
    named = target_of(model_id)
    served = await served_models(llm)
    if named is not None:
        name, version = named
        try:
            config = await configs.get_config(name, version)
        except NotFoundError:
            config = None
        if (
            config is not None
            and (version is not None or config.archived_at is None)
            and access.allows(config.name, config.model)
        ):
            return config_model(config, model_id, served)
    info = served.get(model_id)
    if info is None or not access.allows(None, info.id):
        raise NotFoundError(
            f"The model `{model_id}` does not exist: it is neither a configuration nor a "
            "model an upstream serves (GET /v1/models lists them)",
            details={"field": "model"},
        )
    return upstream_model(info, int(time.time()))
