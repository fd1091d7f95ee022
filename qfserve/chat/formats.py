"""What shape an answer must take, as the client asked: free text, JSON (any object, or one
schema), or calls of the tools it offered; and the GBNF grammar that makes an engine keep to a
JSON shape.

A schema becomes a grammar through llama-cpp-python's JSON Schema converter
(`llama_cpp.llama_grammar`, pure Python), with four corrections where its grammar would let an
answer through that is not valid JSON or not valid against the schema:
- strings: no raw control characters (JSON forbids them; the converter allows them), and a
  pattern's `.` matches no quote, backslash or control character;
- integers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` are kept to (the
  converter ignores them);
- `"type": [...]`: each type keeps the schema's other keywords (the converter drops them);
- a subschema with nothing the grammar can keep to (`{}`, `true`, only a description, or only
  ignored keywords) is any JSON value (the converter makes `{}` an object and fails on the
  others); the whole schema `{}` is any object, as `json_object`.

What the grammar still cannot keep to is listed by `unenforced_keywords`. `strict` decides what
happens to it: strict, the schema is refused (InvalidArgument, naming the keywords), so that an
answer that ends on its own is valid against the whole schema; not strict, those keywords are
ignored by the grammar (the model is still shown them) and the answer keeps to the rest. Either
way the answer is constrained.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llama_cpp import llama_grammar

from qfserve.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """`response_format` json_object (no schema: any JSON object) or json_schema."""

    schema: Mapping[str, Any] | None = None
    name: str = ""
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call: its name, what it is for, its parameters' JSON Schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """`none`, `auto` (answer or call), `required` (call one of them), or `function` (that one)."""

    mode: Literal["none", "auto", "required", "function"] = "auto"
    name: str | None = None


AUTO = ToolChoice()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model made (or made earlier, in the history): arguments as JSON text."""

    id: str
    name: str
    arguments: str


# json_object: any JSON object.
ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


def schema_text(fmt: JsonFormat) -> str:
    """The schema as compact JSON: the grammar cache's key. Its keys keep their order, which
    is the order of the answer's properties."""
    schema = ANY_OBJECT if fmt.schema is None else fmt.schema
    try:
        return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise _invalid(_TOO_DEEP) from None


def json_grammar(fmt: JsonFormat) -> str:
    """The GBNF grammar (root rule `root`) of the answers `fmt` allows. Raises InvalidArgument,
    with the reason, for a schema the converter cannot handle, or, when strict, one with
    keywords the grammar cannot keep to."""
    return grammar_for(schema_text(fmt), fmt.strict)


@functools.lru_cache(maxsize=256)
def grammar_for(text: str, strict: bool) -> str:
    """`json_grammar` for a schema as `schema_text` gives it. Cached: converting a large schema
    costs milliseconds, and clients send the same one again and again."""
    try:
        schema = json.loads(text)
        if not isinstance(schema, dict):
            raise _invalid(" must be a JSON object")
        _check_refs(schema)
        if strict:
            ignored = unenforced_keywords(schema)
            if ignored:
                keywords = ", ".join(ignored)
                raise _invalid(f" is strict, and these keywords cannot be enforced: {keywords}")
        converter = _Converter()
        converter.visit(converter.resolve_refs(schema, ""), "")
        grammar: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    except InvalidArgument:
        raise
    except RecursionError:
        raise _invalid(_TOO_DEEP) from None
    except Exception as exc:  # the converter asserts, and raises what its code happens to
        reason = str(exc) or type(exc).__name__
        raise _invalid(f" cannot be turned into a grammar: {reason}") from None
    return grammar


_TOO_DEEP = " is too deeply nested"


def _invalid(reason: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid Argument: response_format's schema{reason}"[:1000])


def _check_refs(schema: Any) -> None:
    """Only references inside the schema can be followed: nothing is fetched."""
    if isinstance(schema, list):
        for member in schema:
            _check_refs(member)
    elif isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            raise _invalid(
                f": only local $ref (#/...) can be followed, not {json.dumps(ref)[:100]}"
            )
        for member in schema.values():
            _check_refs(member)


def instruction(fmt: JsonFormat) -> str:
    """The line added to the system prompt: a small model constrained without being told what
    is wanted tends to fill the JSON with filler until max_tokens. The schema is told as an
    outline of its shape where it has one (the grammar enforces the rest): every prompt carries
    it, and the schema's own JSON costs about twice the tokens to prefill. A schema with keywords
    the grammar cannot keep to is told whole: the model is then the only one to see them."""
    shape = "object" if fmt.schema is None else outline(fmt.schema)
    if fmt.schema is not None and shape is not None and unenforced_keywords(fmt.schema):
        shape = None
    if shape == "object":
        return "Answer with a JSON object only."
    if shape is None:
        return "Answer with JSON only, matching this JSON Schema: " + schema_text(fmt)
    optional = " (a key marked ? may be left out)" if _OPTIONAL_MARK in shape else ""
    return f"Answer with JSON only, shaped like this{optional}: {shape}"


_OPTIONAL_MARK = '"?:'
_OUTLINED_TYPES = frozenset({"string", "integer", "number", "boolean", "null", "object", "array"})
# Keywords an outline cannot show; a schema using them is told as its JSON text.
_NOT_OUTLINED = frozenset(
    {"$ref", "$defs", "definitions", "allOf", "not", "if", "then", "else", "prefixItems"}
)


def outline(schema: Any) -> str | None:
    """A schema's shape in a compact, TypeScript-like notation, such as
    `{"name": string, "tags": [string, ...], "size"?: "S"|"M"|"L"}`: what the answer holds,
    without the bounds and patterns the grammar enforces anyway. None for a schema the notation
    cannot show (references, `allOf`, conditionals)."""
    try:
        return _outline(schema)
    except RecursionError:
        return None


def _outline(schema: Any) -> str | None:
    if schema is True or schema == {}:
        return "any"
    if not isinstance(schema, Mapping) or _NOT_OUTLINED.intersection(schema):
        return None
    shape = _outline_core(schema)
    description = schema.get("description")
    if shape is not None and isinstance(description, str) and description.strip():
        shape += f" /* {' '.join(description.split())} */"
    return shape


def _outline_core(schema: Mapping[str, Any]) -> str | None:
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            return None
        return "|".join(json.dumps(value, ensure_ascii=False) for value in values)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            members = schema[key]
            if not isinstance(members, list) or not members:
                return None
            shapes = [_outline(member) for member in members]
            return None if None in shapes else "|".join(s for s in shapes if s is not None)
    kind = schema.get("type")
    if isinstance(kind, list):
        if not kind or not all(k in _OUTLINED_TYPES for k in kind):
            return None
        shapes = [_outline_core({**schema, "type": k}) for k in kind]
        return None if None in shapes else "|".join(s for s in shapes if s is not None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind is None:
        return "any"
    if kind not in _OUTLINED_TYPES:
        return None
    if kind == "object":
        return _outline_object(schema)
    if kind == "array":
        items = schema.get("items")
        if items is None:
            return "array"
        shape = _outline(items)
        return None if shape is None else f"[{shape}, ...]"
    return str(kind)


def _outline_object(schema: Mapping[str, Any]) -> str | None:
    properties = schema.get("properties")
    if properties is None:
        return "object"
    if not isinstance(properties, Mapping):
        return None
    required = schema.get("required", [])
    if not isinstance(required, list):
        return None
    fields = []
    for name, member in properties.items():
        shape = _outline(member)
        if shape is None:
            return None
        mark = "" if name in required else "?"
        fields.append(f"{json.dumps(name, ensure_ascii=False)}{mark}: {shape}")
    return "{" + ", ".join(fields) + "}"


def openai_response_format(fmt: JsonFormat) -> dict[str, Any]:
    """`fmt` as OpenAI's `response_format`, for upstreams that take it."""
    if fmt.schema is None:
        return {"type": "json_object"}
    spec = {"name": fmt.name or "answer", "schema": dict(fmt.schema), "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": spec}


# JSON Schema's validation keywords. The others (title, description, default, examples, $defs,
# unknown ones) do not constrain an answer.
_CONSTRAINTS = frozenset(
    (
        "type",
        "enum",
        "const",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxContains",
        "minContains",
        "contains",
        "maxProperties",
        "minProperties",
        "required",
        "dependentRequired",
        "dependencies",
        "properties",
        "patternProperties",
        "additionalProperties",
        "propertyNames",
        "items",
        "prefixItems",
        "additionalItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "format",
        "$ref",
        "$dynamicRef",
    )
)
_INTEGER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_STRING_FORMATS = frozenset(
    ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")
)
# A JSON string's character, and a pattern's `.` (no quote or backslash: those need escapes).
_JSON_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)
_JSON_DOT = r'[^"\\\x7F\x00-\x1F]'
# A subschema that allows any value, as the converter would not read `{}`.
_ANY_VALUE: Mapping[str, Any] = {"description": "any JSON value"}
# The converter's integers have at most 16 digits.
_MAX_DIGITS = 16


def _bounded_integer(schema: Mapping[str, Any]) -> bool:
    """An integer schema whose bounds the grammar keeps to (`_Converter.visit`)."""
    return (
        schema.get("type") == "integer"
        and any(key in schema for key in _INTEGER_BOUNDS)
        and not any(key in schema for key in ("$ref", "anyOf", "oneOf", "const", "enum"))
    )


def _honoured(schema: Mapping[str, Any]) -> set[str]:
    """The keywords of one (non-union) subschema the grammar keeps to, following the
    converter's order of cases."""
    kind = schema.get("type")
    if "$ref" in schema:
        return {"$ref"}
    if "oneOf" in schema:  # before anyOf, as the converter reads them
        return {"oneOf"}
    if "anyOf" in schema:
        return {"anyOf"}
    if "const" in schema:
        return {"const", "type"}
    if "enum" in schema:
        return {"enum", "type"}
    if kind in (None, "object") and (
        "properties" in schema or schema.get("additionalProperties", True) is not True
    ):
        return {"type", "properties", "required", "additionalProperties"}
    if kind in (None, "object") and "allOf" in schema:
        return {"type", "allOf"}
    if kind in (None, "array") and ("items" in schema or "prefixItems" in schema):
        items = schema.get("items") or schema.get("prefixItems")
        if isinstance(items, list):
            return {"type", "items" if "items" in schema else "prefixItems"}
        return {"type", "items", "minItems", "maxItems"}
    if kind in (None, "string") and "pattern" in schema:
        return {"type", "pattern"}
    if kind in (None, "string") and schema.get("format") in _STRING_FORMATS:
        return {"type", "format"}
    if kind == "string":
        return {"type", "minLength", "maxLength"}
    if _bounded_integer(schema):
        return {"type", *_INTEGER_BOUNDS}
    return {"type"}


def unenforced_keywords(schema: Mapping[str, Any]) -> list[str]:
    """Where the schema has keywords the grammar cannot keep to, as `path: keyword`. An answer
    that keeps to the grammar may break these. `oneOf` is kept to as `anyOf` (at least one, not
    exactly one); `allOf` only as the union of its members' `properties` and `required`."""
    return sorted(set(_unenforced(schema, "$")))


def _unenforced(schema: Any, path: str) -> Iterator[str]:
    if not isinstance(schema, Mapping):
        return
    kinds = schema.get("type")
    if isinstance(kinds, list) and not any(k in schema for k in ("$ref", "anyOf", "oneOf")):
        honoured = set[str]()
        for kind in kinds:
            honoured |= _honoured({**schema, "type": kind})
    else:
        honoured = _honoured(schema)
    for key in schema:
        if key in _CONSTRAINTS and key not in honoured:
            yield f"{path}: {key}"
    if "oneOf" in honoured:
        yield f"{path}: oneOf (kept to as anyOf)"
    if "properties" in honoured and isinstance(schema.get("properties"), Mapping):
        for name in schema.get("required", ()):
            if name not in schema["properties"]:
                yield f"{path}: required {name!r} (not in properties)"
    if "allOf" in honoured:
        for i, member in enumerate(schema["allOf"]):
            if isinstance(member, Mapping):
                others = set(member) & _CONSTRAINTS - {"type", "properties", "required", "$ref"}
                yield from (f"{path}.allOf[{i}]: {key}" for key in sorted(others))
    yield from _unenforced_below(schema, path)


def _unenforced_below(schema: Mapping[str, Any], path: str) -> Iterator[str]:
    for key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas"):
        members = schema.get(key)
        if isinstance(members, Mapping):
            for name, member in members.items():
                yield from _unenforced(member, f"{path}.{key}.{name}")
    for key in ("items", "prefixItems", "anyOf", "oneOf", "allOf"):
        members = schema.get(key)
        if isinstance(members, list):
            for i, member in enumerate(members):
                yield from _unenforced(member, f"{path}.{key}[{i}]")
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        yield from _unenforced(schema.get(key), f"{path}.{key}")


class _Converter(llama_grammar.SchemaConverter):
    """The converter with the corrections listed at the top of this module."""

    def __init__(self) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )

    def visit(self, schema: Any, name: str) -> str:
        if schema is True:
            schema = {}
        if not isinstance(schema, Mapping):
            raise _invalid(f" has a subschema that is not an object: {json.dumps(schema)[:100]}")
        rule_name = name + "-" if name in llama_grammar.RESERVED_NAMES else name or "root"
        kinds = schema.get("type")
        if isinstance(kinds, list) and not any(k in schema for k in ("$ref", "anyOf", "oneOf")):
            alternatives = [{**schema, "type": kind} for kind in kinds]
            union: str = self._generate_union_rule(name, alternatives)  # type: ignore[no-untyped-call]
            return self._rule(rule_name, union)
        if not _honoured(schema) & set(schema):
            # Nothing the grammar can keep to (`{}`, annotations, or only ignored keywords).
            return self._rule(rule_name, self._primitive("object" if name == "" else "value"))
        if schema.get("items") in ({}, True) and "prefixItems" not in schema:
            # The converter takes an empty `items` for absent and fails.
            schema = {**schema, "items": _ANY_VALUE}
        if _bounded_integer(schema):
            low, high = _integer_bounds(schema)
            return self._rule(rule_name, f"({' | '.join(_integers(low, high))}) space")
        visited: str = super().visit(schema, name)  # type: ignore[no-untyped-call]
        return visited

    def _rule(self, name: str, rule: str) -> str:
        added: str = self._add_rule(name, rule)
        return added

    def _primitive(self, name: str) -> str:
        added: str = self._add_primitive(name, llama_grammar.PRIMITIVE_RULES[name])
        return added

    def _add_rule(self, name: str, rule: str) -> str:
        added: str = super()._add_rule(  # type: ignore[no-untyped-call]
            name, _JSON_DOT if name == "dot" else rule
        )
        return added

    def _add_primitive(self, name: str, rule: Any) -> str:
        if name == "char":
            rule = llama_grammar.BuiltinRule(_JSON_CHAR, [])
        added: str = super()._add_primitive(name, rule)
        return added


def _integer_bounds(schema: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The least and greatest integers a schema allows (None: unbounded), from both drafts'
    forms of the exclusive bounds (a number, or draft 4's boolean beside minimum/maximum)."""

    def bound(key: str) -> float | None:
        value = schema.get(key)
        if value is None or isinstance(value, bool):
            return None
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise _invalid(f": {key} must be a number, not {value!r}")
        return value

    lows, highs = [], []
    if (minimum := bound("minimum")) is not None:
        draft4 = schema.get("exclusiveMinimum") is True
        lows.append(math.floor(minimum) + 1 if draft4 else math.ceil(minimum))
    if (above := bound("exclusiveMinimum")) is not None:
        lows.append(math.floor(above) + 1)
    if (maximum := bound("maximum")) is not None:
        draft4 = schema.get("exclusiveMaximum") is True
        highs.append(math.ceil(maximum) - 1 if draft4 else math.floor(maximum))
    if (below := bound("exclusiveMaximum")) is not None:
        highs.append(math.ceil(below) - 1)
    limit = 10**_MAX_DIGITS - 1
    low = max(max(lows), -limit) if lows else None
    high = min(min(highs), limit) if highs else None
    if (low is not None and low > limit) or (high is not None and high < -limit):
        raise _invalid(f": integer bounds beyond {_MAX_DIGITS} digits")
    if low is not None and high is not None and low > high:
        raise _invalid(f": no integer is between {low} and {high}")
    return low, high


def _integers(low: int | None, high: int | None) -> list[str]:
    """GBNF alternatives for the decimal integers from `low` to `high` (None: unbounded), in
    JSON's form (no leading zeros, no `-0`)."""
    limit = 10**_MAX_DIGITS - 1
    alternatives = []
    if low is None or low < 0:  # the negatives, by their absolute values
        smallest = 1 if high is None or high >= 0 else -high
        largest = limit if low is None else -low
        alternatives += [f'"-" {digits}' for digits in _naturals(smallest, largest)]
    if high is None or high >= 0:
        smallest = 0 if low is None or low < 0 else low
        largest = limit if high is None else high
        alternatives += _naturals(smallest, largest)
    return alternatives


def _naturals(low: int, high: int) -> list[str]:
    """GBNF sequences for the naturals from `low` to `high`: one range per number of digits."""
    alternatives = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(high, 10**digits - 1)
        if first <= last:
            alternatives += _same_length(str(first), str(last))
    return alternatives


def _same_length(low: str, high: str) -> list[str]:
    """GBNF sequences for the decimal strings from `low` to `high`, both of one length."""
    if not low:
        return [""]
    rest = len(low) - 1
    if low[0] == high[0]:
        return [_seq(f'"{low[0]}"', tail) for tail in _same_length(low[1:], high[1:])]
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return [_seq(f"[{low[0]}-{high[0]}]", *["[0-9]"] * rest)]
    sequences = [_seq(f'"{low[0]}"', tail) for tail in _same_length(low[1:], "9" * rest)]
    if int(high[0]) - int(low[0]) > 1:
        middle = f"[{int(low[0]) + 1}-{int(high[0]) - 1}]"
        sequences.append(_seq(middle, *["[0-9]"] * rest))
    sequences += [_seq(f'"{high[0]}"', tail) for tail in _same_length("0" * rest, high[1:])]
    return sequences


def _seq(*parts: str) -> str:
    return " ".join(part for part in parts if part)
