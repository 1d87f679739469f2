"""LangChain's ``ChatOpenAI`` pointed at the door, unchanged: it never asks a non-OpenAI
base URL for usage, yet every exchange is stored with its exact usage, and its resent
history threads into one conversation."""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from tests.functions.openai.conftest import Door, secret_of
from tests.support.timing import scaled


def chat_model(door: Door, *, streaming: bool) -> ChatOpenAI:
    return ChatOpenAI(
        model="sim-model",
        base_url=door.base_url,
        api_key=secret_of(door.api.alice),  # type: ignore[arg-type]
        streaming=streaming,
        max_retries=0,
        timeout=scaled(15.0),
    )


async def test_langchain_streams_and_invokes_and_the_door_stores_usage(door: Door) -> None:
    history: list[BaseMessage] = [SystemMessage("Be brief."), HumanMessage("Hello")]
    streamed = chat_model(door, streaming=True)
    pieces = [chunk async for chunk in streamed.astream(history)]
    text = "".join(str(piece.content) for piece in pieces)
    assert text
    history += [AIMessage(text), HumanMessage("And then?")]
    answer = await chat_model(door, streaming=False).ainvoke(history)
    assert answer.content

    (conversation,) = await door.conversations()
    stored = await door.messages(conversation["id"])
    assert [m["role"] for m in stored] == ["system", "user", "assistant", "user", "assistant"]
    assert stored[2]["content"] == text
    for reply in (stored[2], stored[4]):
        assert reply["status"] == "complete"
        assert reply["usage"]["completion_tokens"] > 0
    # LangChain asked for none of it: vLLM was asked by the door.
    sent = await door.last_request()
    assert sent["stream_options"]["continuous_usage_stats"] is True
