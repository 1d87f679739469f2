"""``models.list()`` and ``models.retrieve()``: configurations and the models served."""

from __future__ import annotations

import openai
import pytest

from tests.functions.openai.conftest import Door


async def test_models_list_configurations_and_served_models(door: Door) -> None:
    await door.api.create_config("support", system_prompt="Be brief.")
    page = await door.alice.models.list()
    by_id = {model.id: model for model in page.data}
    assert by_id["support"].owned_by == "switchboard"
    assert by_id["support"].model_extra["switchboard"]["kind"] == "config"
    assert by_id["support@1"].model_extra["switchboard"]["version"] == 1
    assert by_id["support"].model_extra["max_model_len"] == 1024  # sim-model's
    served = by_id["slow-model"]
    assert served.owned_by == "vllm"
    assert served.model_extra["switchboard"]["kind"] == "upstream"
    assert served.model_extra["max_model_len"] == 8192
    assert page._request_id


async def test_models_retrieve(door: Door) -> None:
    await door.api.create_config("support")
    assert (await door.alice.models.retrieve("support")).id == "support"
    assert (await door.alice.models.retrieve("support@1")).owned_by == "switchboard"
    assert (await door.alice.models.retrieve("sim-model")).owned_by == "vllm"
    with pytest.raises(openai.NotFoundError):
        await door.alice.models.retrieve("support@2")
    with pytest.raises(openai.NotFoundError):
        await door.alice.models.retrieve("no-such-model")
