"""JSON answers' grammars: built from the schema by llama-cpp-python's converter with our
corrections, refused with the reason when they cannot be built (or, strict, enforced), and
cached. The grammars' behaviour on a real model is tests/integration/test_structured_output.py's."""

from __future__ import annotations

import re
from typing import Any

import pytest

from qfserve.chat.formats import (
    JsonFormat,
    _integer_bounds,
    _integers,
    grammar_for,
    instruction,
    json_grammar,
    openai_response_format,
    outline,
    schema_text,
    unenforced_keywords,
)
from qfserve.errors import InvalidArgument


def rules(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.splitlines())


def as_regex(alternatives: list[str]) -> re.Pattern[str]:
    """The integer alternatives (only quoted digits, `"-"` and digit classes) as a regex."""

    def one(sequence: str) -> str:
        return "".join(part.strip('"') for part in sequence.split())

    return re.compile("|".join(f"(?:{one(a)})" for a in alternatives))


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (0, 0),
        (0, 9),
        (1, 10),
        (7, 7),
        (0, 100),
        (13, 287),
        (99, 1001),
        (-5, 5),
        (-120, -3),
        (-1, 0),
        (1900, 2100),
    ],
)
def test_integer_ranges_are_exact(low: int, high: int) -> None:
    matches = as_regex(_integers(low, high))
    for n in range(low - 300, high + 300):
        assert bool(matches.fullmatch(str(n))) == (low <= n <= high), n
    # JSON's integers only: no leading zeros, no -0.
    for text in ("01", "007", "-0", "-00", "+1", "1.0"):
        assert not matches.fullmatch(text)


def test_one_sided_integer_ranges() -> None:
    at_least = as_regex(_integers(42, None))
    assert at_least.fullmatch("42") and at_least.fullmatch("1000000")
    assert not at_least.fullmatch("41") and not at_least.fullmatch("-50")
    at_most = as_regex(_integers(None, -3))
    assert at_most.fullmatch("-3") and at_most.fullmatch("-999999")
    assert not at_most.fullmatch("-2") and not at_most.fullmatch("0")


@pytest.mark.parametrize(
    ("schema", "bounds"),
    [
        ({"minimum": 1, "maximum": 5}, (1, 5)),
        ({"exclusiveMinimum": 1, "exclusiveMaximum": 5}, (2, 4)),
        ({"minimum": 0.5, "maximum": 4.5}, (1, 4)),
        ({"minimum": 1, "exclusiveMinimum": True, "maximum": 5}, (2, 5)),  # draft 4
        ({"minimum": 3, "exclusiveMinimum": 5}, (6, None)),
        ({"maximum": -1}, (None, -1)),
    ],
)
def test_integer_bounds(schema: dict[str, Any], bounds: tuple[int | None, int | None]) -> None:
    assert _integer_bounds({"type": "integer", **schema}) == bounds


def test_json_object_is_any_object() -> None:
    grammar = json_grammar(JsonFormat())
    assert rules(grammar)["root"] == "object"
    assert schema_text(JsonFormat()) == '{"type":"object"}'


def test_strings_hold_no_raw_control_characters() -> None:
    """JSON forbids them; the converter's own string rule lets them through."""
    grammar = rules(json_grammar(JsonFormat({"type": "object", "properties": {"a": {}}})))
    assert grammar["char"].startswith(r'[^"\\\x7F\x00-\x1F]')
    dotted = {"type": "string", "pattern": "^a.c$"}
    assert rules(json_grammar(JsonFormat(dotted)))["dot"] == r'[^"\\\x7F\x00-\x1F]'


def test_a_bounded_integer_property_gets_a_range_rule() -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["age"],
    }
    grammar = rules(json_grammar(JsonFormat(schema)))
    assert '"1" "2" "0"' in grammar["age"] or '"2" "0"' in grammar["age"]
    assert "integral-part" not in grammar


def test_a_list_of_types_keeps_the_other_keywords() -> None:
    schema = {
        "type": ["object", "null"],
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    }
    grammar = json_grammar(JsonFormat(schema))
    assert '"\\"name\\""' in grammar and '"null"' in grammar


def test_a_property_without_constraints_is_any_value() -> None:
    schema = {"type": "object", "properties": {"note": {"description": "anything"}}}
    assert rules(json_grammar(JsonFormat(schema)))["note"] == "value"


def test_empty_and_true_subschemas_are_any_value() -> None:
    """The converter itself fails on `"items": {}` and on a `true` subschema."""
    schema = {"type": "object", "properties": {"list": {"type": "array", "items": {}}, "x": True}}
    grammar = rules(json_grammar(JsonFormat(schema)))
    assert grammar["list-item"] == "value" and grammar["x"] == "value"


def test_properties_keep_the_schemas_order() -> None:
    schema = {"type": "object", "properties": {"zeta": {}, "alpha": {}}, "required": ["zeta"]}
    root = rules(json_grammar(JsonFormat(schema)))["root"]
    assert root.index("zeta") < root.index("alpha")


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "string", "pattern": "[a-z]+"}, "Pattern must start"),
        ({"type": "date"}, "Unrecognized schema"),
        ({"$ref": "https://example.com/s.json"}, "only local $ref"),
        ({"properties": {"a": {"$ref": "other.json"}}}, "only local $ref"),
        ({"$ref": "#/$defs/missing"}, "missing"),
        ({"type": "object", "properties": {"a": 5}}, "not an object"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer"),
        ({"type": "integer", "minimum": "one"}, "must be a number"),
    ],
)
def test_a_schema_the_converter_cannot_handle_is_invalid(
    schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        json_grammar(JsonFormat(schema))
    assert "response_format" in refused.value.message or reason in refused.value.message
    assert reason in refused.value.message


def test_a_schema_nested_too_deep_is_invalid() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(InvalidArgument):
        json_grammar(JsonFormat(schema))


@pytest.mark.parametrize(
    ("schema", "ignored"),
    [
        ({"type": "number", "minimum": 0}, ["$: minimum"]),
        ({"type": "integer", "multipleOf": 5}, ["$: multipleOf"]),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, ["$: uniqueItems"]),
        ({"type": "string", "format": "email"}, ["$: format"]),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, ["$: maxLength"]),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, ["$: oneOf (kept to as anyOf)"]),
        ({"type": "object", "minProperties": 1}, ["$: minProperties"]),
        (
            {"type": "object", "properties": {"a": {}}, "required": ["a", "b"]},
            ["$: required 'b' (not in properties)"],
        ),
        (
            {"type": "object", "properties": {"n": {"type": "number", "maximum": 1}}},
            ["$.properties.n: maximum"],
        ),
        ({"not": {"type": "string"}}, ["$: not"]),
    ],
)
def test_unenforced_keywords_are_named(schema: dict[str, Any], ignored: list[str]) -> None:
    assert unenforced_keywords(schema) == ignored
    # Not strict: ignored by the grammar, which keeps to the rest.
    assert json_grammar(JsonFormat(schema, strict=False))
    with pytest.raises(InvalidArgument) as refused:
        json_grammar(JsonFormat(schema, strict=True))
    assert "strict" in refused.value.message and ignored[0] in refused.value.message


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 20},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
                "born": {"type": "string", "format": "date"},
                "id": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
                "kind": {"anyOf": [{"const": "x"}, {"type": "null"}]},
                "ref": {"$ref": "#/$defs/point"},
            },
            "required": ["name", "age"],
            "additionalProperties": False,
            "$defs": {"point": {"type": "array", "prefixItems": [{"type": "number"}] * 2}},
            "title": "person",
            "description": "annotations are fine",
        },
        {"type": ["string", "null"], "maxLength": 5},
        {"type": "integer", "exclusiveMaximum": 10},
    ],
)
def test_enforceable_schemas_pass_strict(schema: dict[str, Any]) -> None:
    assert unenforced_keywords(schema) == []
    assert json_grammar(JsonFormat(schema, strict=True))


def test_grammars_are_cached_by_the_schemas_text() -> None:
    schema = {"type": "object", "properties": {"cached": {"type": "boolean"}}}
    first = json_grammar(JsonFormat(schema))
    hits = grammar_for.cache_info().hits
    again = json_grammar(JsonFormat(dict(schema), name="other"))
    assert again == first and grammar_for.cache_info().hits == hits + 1


def test_openai_response_format_and_instruction() -> None:
    assert openai_response_format(JsonFormat()) == {"type": "json_object"}
    schema = {"type": "object"}
    assert openai_response_format(JsonFormat(schema, "pet", strict=True)) == {
        "type": "json_schema",
        "json_schema": {"name": "pet", "schema": schema, "strict": True},
    }
    assert openai_response_format(JsonFormat(schema))["json_schema"]["name"] == "answer"
    assert "JSON object" in instruction(JsonFormat())
    assert instruction(JsonFormat(schema)) == instruction(JsonFormat())


def test_the_instruction_outlines_the_schemas_shape() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2, "description": "the  pet's\nname"},
            "size": {"enum": ["S", "M"]},
            "tags": {"type": "array", "items": {"type": ["string", "null"]}},
            "age": {"anyOf": [{"type": "integer", "minimum": 0}, {"const": "unknown"}]},
            "extra": {},
        },
        "required": ["name", "tags"],
    }
    assert instruction(JsonFormat(schema)) == (
        "Answer with JSON only, shaped like this (a key marked ? may be left out): "
        '{"name": string /* the pet\'s name */, "size"?: "S"|"M", "tags": [string|null, ...], '
        '"age"?: integer|"unknown", "extra"?: any}'
    )
    required = {"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]}
    assert instruction(JsonFormat(required)).endswith('shaped like this: {"a": number}')


def test_a_schema_the_outline_cannot_show_is_told_as_its_json() -> None:
    schema = {
        "type": "object",
        "properties": {"next": {"$ref": "#"}},
        "required": ["next"],
    }
    assert outline(schema) is None
    told = instruction(JsonFormat(schema))
    assert told == "Answer with JSON only, matching this JSON Schema: " + schema_text(
        JsonFormat(schema)
    )


def test_a_schema_with_keywords_the_grammar_ignores_is_told_whole() -> None:
    """The model is the only one to see `maximum` on a number: it must be shown it."""
    schema = {"type": "object", "properties": {"price": {"type": "number", "maximum": 9.5}}}
    assert outline(schema) == '{"price"?: number}'
    assert '"maximum":9.5' in instruction(JsonFormat(schema))
