"""Qianfan V2's request body: OpenAI's (as qfserve takes it), plus Qianfan's own fields. No logic
here.

Unknown fields are accepted. Fields a self-hosted model cannot honour (`web_search`,
`enable_thinking`, `reasoning_effort`, `metadata`) are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from qfserve.api.openai.protocol import ChatCompletionRequest as OpenAIChatCompletionRequest
from qfserve.api.openai.protocol import ChatMessage


class V2Message(ChatMessage):
    name: str | None = None


class ChatCompletionRequest(OpenAIChatCompletionRequest):
    messages: list[V2Message]  # type: ignore[assignment]
    penalty_score: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    web_search: dict[str, Any] | None = None
    enable_thinking: bool | None = None
    reasoning_effort: str | None = None
