"""Qianfan's wire models: the request bodies as the page defines them. No logic here.

Unknown fields are ignored (the SDK sends `extra_parameters`, LangChain `request_timeout`), and a
field sent as `null` counts as absent (LangChain sends `"stop": null`). Types are strict: a string
where a number belongs is 336001, not silently converted.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Every string the server keeps (the ledger's user column) has a bound at the door.
MAX_USER_CHARS = 256


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class MessageIn(WireModel):
    role: str
    content: str


class SamplingFields(WireModel):
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    penalty_score: float | None = None
    stop: list[str] | None = None
    max_output_tokens: int | None = None
    # An extension for reproducible answers (as OpenAI's `seed`); Qianfan ignores it.
    seed: int | None = None
    stream: bool | None = None
    user_id: str | None = Field(default=None, max_length=MAX_USER_CHARS)


class ChatBody(SamplingFields):
    messages: list[MessageIn] = Field(default_factory=list)
    system: str | None = None


class CompletionBody(SamplingFields):
    """The completions route of custom endpoints: one prompt, answered as a single question."""

    prompt: str


class TokenizerBody(WireModel):
    prompt: str
    model: str | None = None
