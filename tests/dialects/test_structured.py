"""`response_format` in-process on the scripted engine, in the OpenAI-shaped dialects: it reaches
the engine as a grammar (and, for remote upstreams, as OpenAI's `response_format`), with a line
in the system prompt; a schema that cannot be made a grammar is refused before any generation.
Qianfan V1 has no such field: it ignores one. The answers on a real model:
tests/integration/test_structured_output.py."""

from __future__ import annotations

from typing import Any

import pytest

from qfserve.chat.formats import JsonFormat, instruction, json_grammar
from qfserve.config import EndpointSettings
from qfserve.engines.base import LoopGuard
from tests.dialects.dialects import OPENAI, V1, V2, Ask, Dialect
from tests.fake_engine import ANSWER
from tests.inprocess import InProcess

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "rank": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["city", "rank"],
}
JSON_OBJECT = {"type": "json_object"}


def json_schema(schema: dict[str, Any], strict: bool | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "place", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


@pytest.fixture(params=[OPENAI, V2], ids=lambda d: d.name)
def shaped(request: pytest.FixtureRequest) -> Dialect:
    chosen: Dialect = request.param
    return chosen


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_json_object_reaches_the_engine_as_a_grammar(
    qf: InProcess, shaped: Dialect, stream: bool
) -> None:
    ask = Ask(stream=stream, system="Be brief", wire={"response_format": JSON_OBJECT})
    assert shaped.reply(shaped.post(qf, shaped.secret(qf, qf.new_app()), ask), ask).text == ANSWER
    sent = qf.engine.last
    assert sent.grammar == json_grammar(JsonFormat())
    assert sent.response_format == JSON_OBJECT
    assert sent.messages[0] == ("system", f"Be brief\n\n{instruction(JsonFormat())}")


@pytest.mark.parametrize("strict", [None, False, True])
def test_json_schema_reaches_the_engine_as_its_grammar(
    qf: InProcess, shaped: Dialect, strict: bool | None
) -> None:
    ask = Ask(wire={"response_format": json_schema(SCHEMA, strict)})
    assert shaped.reply(shaped.post(qf, shaped.secret(qf, qf.new_app()), ask), ask).text == ANSWER
    sent = qf.engine.last
    assert sent.grammar == json_grammar(JsonFormat(SCHEMA, strict=bool(strict)))
    assert sent.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": SCHEMA, "strict": bool(strict)},
    }
    # Without a system prompt of the client's, the instruction is the system prompt.
    role, line = sent.messages[0]
    assert role == "system" and line.startswith("Answer with JSON only") and '"rank"' in line


def test_plain_text_has_no_grammar(qf: InProcess, shaped: Dialect) -> None:
    ask = Ask(wire={"response_format": {"type": "text"}})
    assert shaped.reply(shaped.post(qf, shaped.secret(qf, qf.new_app()), ask), ask).text == ANSWER
    sent = qf.engine.last
    assert sent.grammar is None and sent.response_format is None
    assert sent.messages == (("user", "Hi there"),)


def test_a_json_answer_keeps_dry_but_not_the_presence_penalty(
    qf: InProcess, shaped: Dialect
) -> None:
    """JSON repeats its quotes, commas and braces by design: the endpoint's presence and
    frequency penalties are left out of a constrained answer's loop guard, DRY is kept, its
    sequences broken at newlines only."""
    endpoint = EndpointSettings()
    assert endpoint.presence_penalty > 0 and endpoint.dry_multiplier > 0
    prose = LoopGuard().dry_breakers
    key = shaped.secret(qf, qf.new_app())
    for response_format, presence, breakers in (
        (JSON_OBJECT, 0.0, ("\n",)),
        (None, endpoint.presence_penalty, prose),
    ):
        ask = Ask(wire={"response_format": response_format} if response_format else {})
        assert shaped.reply(shaped.post(qf, key, ask), ask).text == ANSWER
        guard = qf.engine.last.sampling.loop_guard
        assert guard is not None
        assert (guard.presence_penalty, guard.dry_multiplier, guard.dry_breakers) == (
            presence,
            endpoint.dry_multiplier,
            breakers,
        )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("response_format", "named"),
    [
        (json_schema({"type": "string", "pattern": "[a-z]+"}), "Pattern must start"),
        (json_schema({"type": "decimal"}), "Unrecognized schema"),
        (json_schema({"$ref": "https://example.com/schema.json"}), "only local $ref"),
        (json_schema({"type": "integer", "minimum": 3, "maximum": 1}), "no integer"),
        (json_schema({"type": "number", "maximum": 1}, strict=True), "$: maximum"),
        (json_schema({"type": "array", "uniqueItems": True}, strict=True), "uniqueItems"),
    ],
    ids=["unanchored-pattern", "unknown-type", "remote-ref", "empty-range", "strict", "strict2"],
)
def test_a_schema_that_cannot_be_kept_to_is_refused_before_generation(
    qf: InProcess, shaped: Dialect, response_format: dict[str, Any], named: str, stream: bool
) -> None:
    ask = Ask(stream=stream, wire={"response_format": response_format})
    failure = shaped.failure(shaped.post(qf, shaped.secret(qf, qf.new_app()), ask))
    assert (failure.code, failure.status) == (shaped.code(336001, "invalid_argument"), 400)
    assert "response_format" in failure.message and named in failure.message
    assert qf.engine.requests == []


def test_unenforceable_keywords_are_ignored_when_not_strict(qf: InProcess, shaped: Dialect) -> None:
    schema = {"type": "number", "maximum": 1}
    ask = Ask(wire={"response_format": json_schema(schema, strict=False)})
    assert shaped.reply(shaped.post(qf, shaped.secret(qf, qf.new_app()), ask), ask).text == ANSWER
    assert qf.engine.last.grammar == json_grammar(JsonFormat(schema))


def test_a_response_format_that_is_not_one_is_invalid(qf: InProcess, shaped: Dialect) -> None:
    ask = Ask(wire={"response_format": {"type": "yaml"}})
    failure = shaped.failure(shaped.post(qf, shaped.secret(qf, qf.new_app()), ask))
    assert failure.status == 400 and "response_format" in failure.message
    assert qf.engine.requests == []


def test_qianfan_v1_ignores_response_format(qf: InProcess) -> None:
    """The page's Llama-2 endpoint has no such field; like every field it does not know, it is
    ignored."""
    ask = Ask(wire={"response_format": JSON_OBJECT})
    assert V1.reply(V1.post(qf, V1.secret(qf, qf.new_app()), ask), ask).text == ANSWER
    assert qf.engine.last.grammar is None and qf.engine.last.response_format is None
