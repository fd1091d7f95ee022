"""`response_format` on the bundled model, through the unmodified `openai` SDK on /v1 and /v2:
every answer that ends on its own is JSON valid against its schema (the `jsonschema` package's
Draft 2020-12 validator, formats checked); one cut by max_tokens ends with "length" and claims
nothing. Also: json_object answers are objects, constrained and free answers at once, a schema
that cannot be made a grammar refused before generation, and a remote endpoint passing
`response_format` on to a llama-cpp-python server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.llama_servers import running_llama_servers
from tests.servers import Server, qfserve, running_server

pytestmark = [pytest.mark.model, pytest.mark.slow]

LOCAL = "llama_2_7b"
REMOTE = "remote_llama"
MAX_TOKENS = 120


def words(max_length: int = 40) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length}


def obj(required: bool = True, **properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties}
    return {**schema, "required": list(properties)} if required else schema


# (name, question, schema): nested objects, arrays with bounds, enums, bounded integers, numbers,
# patterns, formats, unions, references, a top-level array.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "person",
        "Describe a fictional person: their name and age.",
        obj(name=words(), age={"type": "integer", "minimum": 0, "maximum": 120}),
    ),
    (
        "book",
        "Tell me about a famous novel: its title, its author, and the year it was published.",
        obj(
            book=obj(title=words(), author=obj(first=words(20), last=words(20))),
            year={"type": "integer", "minimum": 1450, "maximum": 2030},
        ),
    ),
    (
        "fruits",
        "List a few fruits.",
        obj(fruits={"type": "array", "items": words(15), "minItems": 2, "maxItems": 4}),
    ),
    (
        "color",
        "Pick a color for a fire truck, and say whether it is bright.",
        obj(color={"enum": ["red", "green", "blue"]}, bright={"type": "boolean"}),
    ),
    (
        "weather",
        "Give today's weather in Paris: the temperature in degrees and the humidity percent.",
        obj(
            temperature={"type": "number"},
            humidity={"type": "integer", "minimum": 0, "maximum": 100},
        ),
    ),
    (
        "code",
        "Make up a product code: three capital letters, a dash, three digits.",
        obj(code={"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}),
    ),
    (
        "event",
        "Name a holiday and the date it falls on in 2024.",
        obj(holiday=words(30), date={"type": "string", "format": "date"}),
    ),
    (
        "order",
        "Write a shopping order of one to three items with quantities.",
        obj(
            items={
                "type": "array",
                "items": obj(name=words(20), qty={"type": "integer", "minimum": 1, "maximum": 99}),
                "minItems": 1,
                "maxItems": 3,
            }
        ),
    ),
    (
        "answer",
        "What is the capital of Australia? Say how confident you are.",
        obj(
            answer={"type": ["string", "null"], "maxLength": 30},
            confidence={"enum": ["low", "medium", "high"]},
        ),
    ),
    (
        "dice",
        "Roll three six-sided dice.",
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 6},
            "minItems": 3,
            "maxItems": 3,
        },
    ),
    (
        "segment",
        "Give a line segment: its start and end points on a small grid.",
        {
            "$defs": {
                "point": obj(
                    x={"type": "integer", "minimum": -10, "maximum": 10},
                    y={"type": "integer", "minimum": -10, "maximum": 10},
                )
            },
            **obj(start={"$ref": "#/$defs/point"}, end={"$ref": "#/$defs/point"}),
        },
    ),
    (
        "ticket",
        "Open a support ticket: its id, its priority and an optional short note.",
        {
            **obj(
                required=False,
                id={"type": "string", "format": "uuid"},
                priority={"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4},
                note=words(30),
            ),
            "required": ["id", "priority"],
            "additionalProperties": False,
        },
    ),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """qfserve with the embedded model, and a remote endpoint on a llama-cpp-python server."""
    with running_llama_servers(tmp_path_factory.mktemp("upstream"), count=1) as (upstream,):
        folder = tmp_path_factory.mktemp("structured")
        config = folder / "qfserve.toml"
        config.write_text(
            f'[[endpoints]]\nname = "{LOCAL}"\n\n'
            f'[[endpoints]]\nname = "{REMOTE}"\nengine = "remote"\n'
            f'upstreams = ["{upstream.url}"]\ncontext_length = 1024\n'
            'upstream_schema_format = "json_object"\n'
        )
        with running_server(folder, QFSERVE_CONFIG=str(config)) as server:
            yield server


def key(server: Server, command: str) -> str:
    app_id = str(server.create_app(command)["app_id"])
    created = json.loads(qfserve("app", command, "create", app_id, "--json", env=server.env).stdout)
    return str(created["key" if command == "key" else "api_key"])


@pytest.fixture(scope="module")
def clients(gateway: Server) -> dict[str, openai.OpenAI]:
    return {
        "v1": openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key=key(gateway, "key"), max_retries=0
        ),
        "v2": openai.OpenAI(
            base_url=f"{gateway.url}/v2", api_key=key(gateway, "v2-key"), max_retries=0
        ),
    }


def ask(
    client: openai.OpenAI,
    question: str,
    response_format: dict[str, Any] | None,
    model: str = LOCAL,
    max_tokens: int = MAX_TOKENS,
) -> ChatCompletion:
    extra = {"response_format": response_format} if response_format else {}
    # The SDK's types know OpenAI's models only; the call is the SDK's own all the same.
    completions: Any = client.chat.completions
    reply: ChatCompletion = completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0.01,
        **extra,
    )
    return reply


def schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def check(reply: ChatCompletion, schema: dict[str, Any]) -> bool:
    """Whether the answer ended on its own; if it did, it must be valid."""
    (choice,) = reply.choices
    assert choice.finish_reason in ("stop", "length"), choice
    if choice.finish_reason != "stop":
        return False
    text = choice.message.content or ""
    answer = json.loads(text)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = [error.message for error in validator.iter_errors(answer)]
    assert not errors, (text, errors)
    return True


def test_every_finished_answer_is_valid_against_its_schema(
    clients: dict[str, openai.OpenAI],
) -> None:
    finished = []
    for index, (name, question, schema) in enumerate(CASES):
        dialect = ("v1", "v2")[index % 2]  # the same pipeline behind both: each case once
        reply = ask(clients[dialect], question, schema_format(name, schema))
        finished.append((dialect, name, check(reply, schema)))
    # A claim about finished answers only means something if most finish.
    unfinished = [(d, n) for d, n, done in finished if not done]
    assert len(unfinished) <= len(finished) // 4, unfinished


def test_json_object_answers_are_objects(clients: dict[str, openai.OpenAI]) -> None:
    questions = ["Describe a cat.", "What is 2 + 2?", "Hi", "List three colors."]
    finished = 0
    for index, question in enumerate(questions):
        reply = ask(clients[("v1", "v2")[index % 2]], question, {"type": "json_object"})
        if check(reply, {"type": "object"}):
            finished += 1
    assert finished >= len(questions) // 2


def test_an_answer_cut_short_says_length(clients: dict[str, openai.OpenAI]) -> None:
    name, question, schema = CASES[1]
    reply = ask(clients["v1"], question, schema_format(name, schema), max_tokens=5)
    assert reply.choices[0].finish_reason == "length"


def test_constrained_and_free_answers_at_once(clients: dict[str, openai.OpenAI]) -> None:
    def one(index: int) -> bool:
        client = clients["v1" if index % 2 else "v2"]
        if index % 4 == 3:
            reply = ask(client, "Name a fruit.", None, max_tokens=24)
            assert reply.choices[0].message.content and reply.choices[0].finish_reason
            return True
        name, question, schema = CASES[index]
        return check(ask(client, question, schema_format(name, schema)), schema)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert sum(results) >= 6, results


@pytest.mark.parametrize("dialect", ["v1", "v2"])
def test_a_schema_that_cannot_be_a_grammar_is_refused(
    clients: dict[str, openai.OpenAI], dialect: str
) -> None:
    bad = schema_format("code", {"type": "string", "pattern": "[A-Z]+"})  # not anchored
    with pytest.raises(openai.BadRequestError) as refused:
        ask(clients[dialect], "Make up a code.", bad)
    assert refused.value.status_code == 400
    if dialect == "v2":
        assert refused.value.code == "invalid_argument"
    assert "Pattern must start" in str(refused.value)
    spec = {"name": "n", "strict": True, "schema": {"type": "number", "minimum": 0}}
    strict = {"type": "json_schema", "json_schema": spec}
    with pytest.raises(openai.BadRequestError) as unenforceable:
        ask(clients[dialect], "Pick a number.", strict)
    assert "minimum" in str(unenforceable.value)


def test_a_remote_endpoint_passes_response_format_on(clients: dict[str, openai.OpenAI]) -> None:
    """The upstream builds its own grammar, with its own converter: the cases it keeps to."""
    finished = 0
    for name, question, schema in (CASES[2], CASES[3], CASES[5]):
        reply = ask(clients["v2"], question, schema_format(name, schema), model=REMOTE)
        finished += check(reply, schema)
    reply = ask(clients["v1"], "Describe a dog.", {"type": "json_object"}, model=REMOTE)
    finished += check(reply, {"type": "object"})
    assert finished >= 3
