"""The engine interface: where tokens come from.

Engines know nothing of apps, quotas or the Qianfan wire format. They take a prompt already turned
into token ids, sample an answer and yield it as text deltas. The conversation rules (templates,
history forgetting, segmenting) live in `qfserve.chat`; the HTTP in `qfserve.api`.

Cancellation contract: closing or cancelling the iterator returned by `Engine.generate` (the client
went away) frees the sequence within one decode step. Aborting is idempotent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from qfserve.chat.formats import ToolCall, ToolChoice, ToolSpec

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token. `temperature` 0 means greedy."""

    max_tokens: int
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The loop guard (llama.cpp's DRY sampler and presence/frequency penalties); all off here,
    # the endpoint's settings turn them on.
    loop_guard: LoopGuard | None = None


@dataclass(frozen=True, slots=True)
class LoopGuard:
    """What keeps an answer from repeating itself until the token cap.

    DRY penalises a token that would extend a sequence already seen in the last `dry_last_n`
    tokens, past `dry_allowed_length` tokens, by `dry_multiplier` x `dry_base` ^ (length -
    allowed); `dry_multiplier` 0 turns it off. A match stops at any of `dry_breakers`. Presence
    and frequency penalties (OpenAI's meaning) look at the last `penalty_last_n` tokens."""

    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = 1024
    # llama.cpp's own defaults: in prose, a repeated line opening, a key in "key: value", quotes
    # and markdown's bullets are not loops.
    dry_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    prompt_tokens: list[int]
    sampling: SamplingParams
    messages: tuple[tuple[str, str], ...] = ()
    prompt_text: str = ""
    # A GBNF grammar (root rule `root`) the answer must keep to; None: free.
    grammar: str | None = None
    # For remote upstreams, which apply their own model's template and call format: the tools
    # offered (none: not offered), and per message of `messages` (empty when none has any) the
    # calls an assistant made and the call a tool message answers.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    message_calls: tuple[tuple[tuple[ToolCall, ...], str | None], ...] = ()
    # The same constraint as OpenAI's `response_format`, for engines whose upstream builds its
    # own grammar (remote ones); None: free.
    response_format: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer.

    `token_count` is the number of generated tokens this delta accounts for (its text may be empty
    while a multi-byte character or a possible stop string is held back). The last delta of a
    generation has a `finish_reason`.
    """

    text: str
    token_count: int
    finish_reason: FinishReason | None = None
    # On the last delta, where the engine knows them: the prompt as the model counted it (a
    # remote upstream's own tokenizer), and how much of it came from a prefix cache.
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    # On the last delta: the calls of the client's tools the answer makes, where the engine
    # reads them itself (a remote upstream's); the chat layer reads other answers for calls.
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the chat layer needs to know of the model behind an endpoint."""

    name: str
    model_path: str
    context_length: int
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    model_name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier of a prefix cache outside the slots: its budget and holdings, then running totals
    since start (admissions it served or could not serve, entries pushed out by the budget,
    prompt tokens restored instead of prefilled)."""

    tier: str
    budget_bytes: int
    bytes: int
    entries: int
    hits: int
    misses: int
    evictions: int
    restored_tokens: int


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot for /metrics: gauges, then running totals since start."""

    running: int
    waiting: int
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    prefix_tiers: tuple[TierStats, ...] = ()
    # A KV cache shared by all sequences: its cells (0: none, each sequence has its own), those
    # the running sequences reserved, and those the idle slots' cached prefixes hold.
    kv_pool_cells: int = 0
    kv_cells_reserved: int = 0
    kv_cells_cached: int = 0


class Engine(Protocol):
    """A source of tokens for one endpoint.

    `start` loads what the engine needs and returns once it can serve; `drain` winds it down at
    shutdown; `close` cancels what is still running and frees the model. `tokenize` is
    thread-safe and cheap enough to call on the event loop for prompts of a few thousand
    characters.
    """

    @property
    def info(self) -> EngineInfo: ...

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def drain(self, grace_seconds: float) -> None:
        """Take no new requests (they get EngineUnavailable); let running ones finish for up to
        `grace_seconds`, then end them with EngineUnavailable, so clients get an error instead
        of a cut connection."""
        ...

    async def close(self) -> None: ...

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...

    def stats(self) -> EngineStats:
        """Cheap and callable from any thread: read at scrape time."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """The answer as deltas. An engine may first yield an empty delta (no text, no tokens)
        once the request is taken but before its first token (a remote upstream's 2xx): the API
        may then start its response. Failures after that come from the generator as errors."""
        ...
