"""A chat request made ready for its engine, and what is learnt while it is answered."""

from __future__ import annotations

from dataclasses import dataclass, field

from qfserve.chat.formats import ToolCall
from qfserve.chat.safety import Hit, StreamGuard
from qfserve.chat.tools import ToolUse
from qfserve.engines.base import Engine, FinishReason, GenerationRequest
from qfserve.metrics import RequestClock
from qfserve.serving.request import Ending, Usage


@dataclass(slots=True)
class Tally:
    """What is learnt while the answer is generated, read once it is done: a safety hit on the
    answer, and the engine's own counts of the prompt (a remote upstream's tokenizer) and of the
    prompt tokens its prefix cache served."""

    hit: Hit | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None

    @property
    def category(self) -> str | None:
        return self.hit.category if self.hit is not None else None

    def usage(self, prepared_prompt_tokens: int, completion_tokens: int) -> Usage:
        prompt = self.prompt_tokens if self.prompt_tokens is not None else prepared_prompt_tokens
        return Usage(prompt, completion_tokens, self.cached_tokens or 0)


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """A validated request, its prompt rendered and counted, ready for the engine."""

    engine: Engine
    generation: GenerationRequest
    clock: RequestClock
    guard: StreamGuard | None = None
    tally: Tally = field(default_factory=Tally)
    # The tools the answer may call: it is read for calls. None: none are offered.
    tools: ToolUse | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt_tokens)


@dataclass(frozen=True, slots=True)
class Answer:
    text: str  # the refusal when the answer was flagged
    ending: Ending
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()


def ending(finish: FinishReason, tally: Tally, *, called: bool = False) -> Ending:
    if tally.hit is not None:
        return "content_filter"
    if called:
        return "tool_calls"
    return "length" if finish == "length" else "stop"
