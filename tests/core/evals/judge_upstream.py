"""A judge model on a real socket: an OpenAI-compatible server that grades by a fixed rule.

The vLLM simulator's replies are word salad, so a judge on it could never give a score a
test can predict. This server serves ``judge-model`` and answers every chat with a streamed
reply computed from the prompt the judge scorer built:

- a response that contains the reference answer: ``Score: 5``;
- ``NOSCORE`` in the reference or the response: a reply with no score (the scorer fails);
- otherwise ``Score: 2``.

:func:`expected_judge_score` is the same rule, for the tests to compute expectations.
"""

from __future__ import annotations

import json
import re

from tests.core.llm.scripted_server import RawHttpServer

JUDGE_MODEL = "judge-model"
_SECTIONS = re.compile(
    r"REFERENCE ANSWER:\n(?P<reference>.*?)\n\nRESPONSE:\n(?P<response>.*)\Z", re.S
)


def expected_judge_score(reference: str, response: str) -> int | None:
    if "NOSCORE" in reference or "NOSCORE" in response:
        return None
    return 5 if reference and reference in response else 2


def judge_reply(prompt: str) -> str:
    found = _SECTIONS.search(prompt)
    reference, response = (found["reference"], found["response"]) if found else ("", prompt)
    score = expected_judge_score(reference, response)
    if score is None:
        return "I cannot grade this."
    return f"The response was read against the rubric.\nScore: {score}"


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    body = {
        "id": "judge-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": JUDGE_MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _stream(text: str) -> bytes:
    usage = {
        "id": "judge-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": JUDGE_MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    body = (
        _chunk({"role": "assistant", "content": ""})
        + _chunk({"content": text})
        + _chunk({}, "stop")
        + b"data: "
        + json.dumps(usage).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return head + body


def _json(status: int, body: object) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


class JudgeUpstream(RawHttpServer):
    """The server; ``prompts`` keeps every chat prompt it graded."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def answer(self, head: bytes, path: bytes, body: bytes) -> bytes | None:
        if path.endswith(b"/models"):
            card = {"id": JUDGE_MODEL, "object": "model", "owned_by": "test", "root": JUDGE_MODEL}
            return _json(200, {"object": "list", "data": [card]})
        if path.endswith(b"/chat/completions"):
            request = json.loads(body)
            prompt = "\n".join(str(m.get("content", "")) for m in request["messages"])
            self.prompts.append(prompt)
            return _stream(judge_reply(prompt))
        if path.endswith(b"/health"):
            return _json(200, {})
        return _json(404, {"detail": "Not Found"})
