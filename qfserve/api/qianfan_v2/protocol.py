"""Qianfan V2's request body: OpenAI's, plus Qianfan's own fields. No logic here.

Unknown fields are accepted. Fields a self-hosted model cannot honour (`web_search`,
`enable_thinking`, `reasoning_effort`, `metadata`) are accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from qfserve.api.openai.protocol import (
    MAX_USER_CHARS,
    ChatMessage,
    ResponseFormat,
    StreamOptions,
    Tool,
    WireModel,
)


class V2Message(ChatMessage):
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(WireModel):
    model: str
    messages: list[V2Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    penalty_score: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    web_search: dict[str, Any] | None = None
    enable_thinking: bool | None = None
    reasoning_effort: str | None = None
