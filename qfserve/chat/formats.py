"""What shape an answer must take, as the client asked: free text, JSON (any object, or one
schema), or calls of the tools it offered. Pure data here; the grammars that make an engine keep
to a shape are built from these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


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
