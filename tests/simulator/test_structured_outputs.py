"""Structured outputs: ``response_format`` (``json_object``, ``json_schema``) and vLLM's
``structured_outputs`` (``json``, ``choice``) give replies that parse and match; the
``guided_*`` fields vLLM 0.12 removed are ignored as unknown fields, as vLLM >= 0.12 does."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.simulator.conftest import MODEL, chat_body, parse_sse

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "exclusiveMaximum": 30},
        "height": {"type": "number", "exclusiveMinimum": 1.5, "maximum": 2.1},
        "member": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
        "nickname": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
        "address": {"$ref": "#/$defs/address"},
        "contact": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
    },
    "required": ["name", "age", "id"],
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"const": "04524"}},
            "required": ["city"],
        }
    },
}
COLORS = ["red", "green", "blue"]


async def chat(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body)


async def content(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await chat(client, body)
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


async def test_json_schema_replies_match_the_schema(client: httpx.AsyncClient) -> None:
    body = chat_body("Tell me about Mina", response_format=json_schema_format(PERSON))
    text = await content(client, body)
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    assert set(value) >= {"name", "age", "id", "address"}
    assert value["address"]["zip"] == "04524"
    assert await content(client, body) == text  # deterministic
    # A streamed reply is the same JSON in token-sized pieces.
    events = parse_sse((await chat(client, {**body, "stream": True})).content)
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]]
    assert len(pieces) > 5
    assert "".join(pieces) == text


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": -1}},
        {"type": "string", "format": "date-time"},
        {"type": "number", "minimum": 10, "maximum": 10},
        {"type": "object", "properties": {}, "additionalProperties": False},
        {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}], "minItems": 2},
        {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["a", "b"]}]},
        {"oneOf": [{"type": "object", "properties": {"k": {"enum": [1, 2]}}, "required": ["k"]}]},
        {},
        True,
    ],
)
async def test_every_supported_keyword_gives_a_matching_value(
    client: httpx.AsyncClient, schema: Any
) -> None:
    body = chat_body(response_format=json_schema_format(schema))
    jsonschema.validate(json.loads(await content(client, body)), schema)


async def test_json_object_and_structured_outputs_json(client: httpx.AsyncClient) -> None:
    value = json.loads(await content(client, chat_body(response_format={"type": "json_object"})))
    assert isinstance(value, dict)
    assert value
    for schema in (PERSON, json.dumps(PERSON)):  # vLLM takes the schema or its JSON text
        body = chat_body(structured_outputs={"json": schema})
        jsonschema.validate(json.loads(await content(client, body)), PERSON)


async def test_each_of_n_choices_matches(client: httpx.AsyncClient) -> None:
    body = chat_body(n=3, response_format=json_schema_format(PERSON))
    choices = (await chat(client, body)).json()["choices"]
    for choice in choices:
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)


async def test_choice_answers_one_of_the_choices(client: httpx.AsyncClient) -> None:
    answers = set()
    for seed in range(8):
        body = chat_body("Pick a color", seed=seed, structured_outputs={"choice": COLORS})
        answers.add(await content(client, body))
    assert answers <= set(COLORS)
    assert len(answers) > 1  # the seed picks, so more than one comes up


async def test_the_removed_guided_fields_are_ignored(client: httpx.AsyncClient) -> None:
    # vLLM 0.12 dropped guided_json/guided_regex/guided_choice/guided_grammar from its request
    # models, which allow extra fields: they are accepted and have no effect. A gateway that
    # wants them honoured must rewrite them to structured_outputs.
    plain = await content(client, chat_body("Pick a color", seed=1))
    for extra in (
        {"guided_choice": COLORS},
        {"guided_json": PERSON},
        {"guided_regex": "[a-z]+"},
        {"guided_grammar": 'root ::= "x"'},
    ):
        assert await content(client, chat_body("Pick a color", seed=1, **extra)) == plain
    rewritten = chat_body("Pick a color", seed=1, structured_outputs={"choice": COLORS})
    assert await content(client, rewritten) in COLORS


async def test_max_tokens_cuts_structured_output_like_any_text(client: httpx.AsyncClient) -> None:
    body = chat_body(response_format=json_schema_format(PERSON), max_tokens=4)
    choice = (await chat(client, body)).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice["message"]["content"])


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        (
            {"response_format": {"type": "json_schema"}},
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
            "response_format",
        ),
        ({"response_format": {"type": "yaml"}}, "Invalid enum value 'yaml'", "response_format"),
        (
            {"structured_outputs": {"json": {"type": "string"}, "choice": ["a"]}},
            "You can only use one kind of constraints for structured outputs",
            "structured_outputs",
        ),
        (
            {"structured_outputs": {"json": "{not json"}},
            "The JSON schema is not valid JSON",
            "structured_outputs",
        ),
        (
            {"response_format": json_schema_format({"$ref": "#/$defs/missing"})},
            "Unresolvable $ref",
            "response_format",
        ),
    ],
)
async def test_bad_constraints_are_400(
    client: httpx.AsyncClient, extra: dict[str, Any], message: str, param: str
) -> None:
    response = await chat(client, chat_body(**extra))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith(message)
    if param is not None:
        assert error["param"] == param


async def test_legacy_completions_honour_structured_outputs(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "Describe Mina:", "max_tokens": 200}
    response = await client.post(
        "/v1/completions", json={**body, "response_format": json_schema_format(PERSON)}
    )
    jsonschema.validate(json.loads(response.json()["choices"][0]["text"]), PERSON)
    choice = await client.post(
        "/v1/completions", json={**body, "structured_outputs": {"choice": COLORS}}
    )
    assert choice.json()["choices"][0]["text"] in COLORS
