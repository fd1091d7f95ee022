"""OpenAI's chat completions wire models, the part qfserve serves. No logic here.

Unknown fields are accepted and ignored (clients send many: `logprobs`, `logit_bias`, ...); those
that change the answer's meaning (`response_format`, `tools`) are parsed here and honoured by
the pipeline.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Every string the server keeps (the ledger's user column) has a bound at the door.
MAX_USER_CHARS = 256


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class FunctionCall(WireModel):
    name: str
    # A JSON text, as OpenAI sends it; an object is taken too.
    arguments: str | dict[str, Any] = "{}"


class ToolCallPart(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: str
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallPart] | None = None  # an assistant's calls of the client's tools
    tool_call_id: str | None = None  # the call a `tool` message answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(WireModel):
    include_usage: bool = False


class JsonSchemaFormat(WireModel):
    name: str = ""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class FunctionSpec(WireModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(WireModel):
    type: Literal["function"] = "function"
    function: FunctionSpec


class ChatCompletionRequest(WireModel):
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Extensions that llama.cpp and vLLM accept too.
    top_k: int | None = None
    repetition_penalty: float | None = None
