"""OpenAI's chat completions wire models, the part qfserve serves. No logic here.

Unknown fields are accepted and ignored (clients send many: `logprobs`, `tools`, ...); those that
would change the answer's meaning and that qfserve cannot honour are refused by the routes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ChatMessage(WireModel):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(WireModel):
    include_usage: bool = False


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
    user: str | None = None
    # Extensions that llama.cpp and vLLM accept too.
    top_k: int | None = None
    repetition_penalty: float | None = None
