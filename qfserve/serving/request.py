"""A chat call in no dialect's shape, and what the pipeline gives back for it.

Each dialect parses its body into a `ChatRequest` and renders a `Refused`, `Completed` or
`Streaming` in its own shape. Nothing here knows HTTP or any wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from qfserve.chat.conversation import Message
from qfserve.chat.formats import AUTO, JsonFormat, ToolCall, ToolChoice, ToolSpec
from qfserve.chat.params import QIANFAN, DialectRules, RequestedSampling
from qfserve.chat.safety import Verdict
from qfserve.errors import QfserveError

# What ended an answer, as every dialect can say it: "content_filter" when safety stopped it.
Ending = Literal["stop", "length", "content_filter", "tool_calls"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the client asked for, parsed and typed by its dialect."""

    endpoint: str
    messages: list[Message]
    system: str | None = None
    sampling: RequestedSampling = field(default_factory=RequestedSampling)
    rules: DialectRules = QIANFAN
    stream: bool = False
    # The answer in sentence segments (Qianfan V1's stream) rather than as the engine's deltas.
    segmented: bool = False
    user_id: str | None = None
    # A stream ends with the whole answer's usage (OpenAI's `stream_options.include_usage`).
    include_usage: bool = False
    # The answer as JSON (`response_format`); None: free text.
    json_format: JsonFormat | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = AUTO
    parallel_tool_calls: bool = True


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    # Prompt tokens served from the engine's prefix cache rather than computed again.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Refused:
    """A flagged question: answered with the refusal, without generation."""

    request: ChatRequest
    request_id: str
    text: str
    verdict: Verdict
    usage: Usage
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Completed:
    """A whole answer. A flagged answer's text is the refusal. An answer that calls tools has
    its calls (ending "tool_calls") and, usually, no text."""

    request: ChatRequest
    request_id: str
    text: str
    ending: Ending
    usage: Usage
    headers: dict[str, str]
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of a streamed answer: a sentence segment, or an engine's delta.

    The last piece has an `ending`, or an `error` when the answer failed after it began (the
    dialect sends it as its stream's last event). `usage` is the running total so far. An
    answer's tool calls come whole on its last piece, ending "tool_calls": text that may be a
    call is held back until it is known whether it is one."""

    text: str
    completion_tokens: int
    usage: Usage
    ending: Ending | None = None
    error: QfserveError | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def is_last(self) -> bool:
        return self.ending is not None or self.error is not None


@dataclass(frozen=True, slots=True)
class Streaming:
    """An answer under way. Its first piece has been produced already, so every error that can
    be told before the first byte has been raised. The pieces must be read to the end or closed
    (`aclose`): closing stops the generation and settles the call as abandoned."""

    request: ChatRequest
    request_id: str
    pieces: AsyncIterator[Piece]
    prompt_tokens: int
    headers: dict[str, str]
    abandon: Callable[[], Awaitable[None]]

    async def aclose(self) -> None:
        """Idempotent; after the last piece it changes nothing."""
        aclose = getattr(self.pieces, "aclose", None)
        if aclose is not None:
            await aclose()
        await self.abandon()


Outcome = Refused | Completed | Streaming
