"""The client's legacy completions reading mode: ``ChatRequest.completion_prompt`` goes to
vLLM's ``/v1/completions`` as ``prompt`` (never ``messages``), and the chunks' ``text`` is
read as the reply's content by every reading face."""

from __future__ import annotations

import httpx

from functions.core.llm.dispatch import encode_body
from functions.core.llm.schemas import ChatDone, UpstreamEvent
from tests.core.llm.conftest import MODEL, MakeClient, chat_request, sim_stats
from tests.support.simulator import SimulatorProcess

PROMPT = "Once upon a time"


async def vllms_own(sim: SimulatorProcess, **body: object) -> str:
    """The text the simulator itself completes ``PROMPT`` with, non-streamed."""
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.post(
            "/completions", json={"model": MODEL, "prompt": PROMPT, **body}
        )
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["text"]
    return text


def test_the_body_carries_the_prompt_in_place_of_the_messages() -> None:
    body = encode_body(
        chat_request(completion_prompt=[1, 2, 3], extra={"prompt": "ignored", "echo": True}),
        stream=True,
    )
    assert b'"messages"' not in body
    assert b'"prompt":[1,2,3]' in body
    assert b'"echo":true' in body
    assert b'"include_usage":true' in body


async def test_collect_and_stream_raw_read_a_completion(
    fresh: SimulatorProcess, make_client: MakeClient
) -> None:
    client = make_client(fresh.base_url)
    expected = await vllms_own(fresh, seed=4)
    asked = chat_request("stored, not sent", completion_prompt=PROMPT, seed=4)

    result = await client.collect_chat(asked)
    assert result.content == expected
    assert result.finish_reason in ("stop", "length")
    assert result.usage is not None
    assert result.usage.completion_tokens > 0
    # The chat route would have refused a body without messages.
    sent = (await sim_stats(fresh))["last_chat_request"]
    assert sent["body"]["prompt"] == PROMPT
    assert "messages" not in sent["body"]

    texts: list[str] = []
    done = None
    async for event in client.stream_raw(asked):
        if isinstance(event, UpstreamEvent):
            texts.append(event.text)
        elif isinstance(event, ChatDone):
            done = event
    assert "".join(texts) == expected
    assert done is not None
    assert done.usage == result.usage

    streamed = [
        event.text async for event in client.stream_chat(asked) if not isinstance(event, ChatDone)
    ]
    assert "".join(streamed) == expected
