"""A scripted engine for in-process tests: every dialect's behaviour without loading a model.

It tokenizes one token per whitespace-separated word (ids from a checksum, so deterministic) and
answers from a `Script`: a fixed text sent one word per delta, a finish reason, an error raised
before the first delta or after some, a pause per token. It keeps every `GenerationRequest` it was
given, so tests can assert on the prompt and the sampling, and notes how each generation ended:
finished, failed (its scripted error, or ended by a drain) or closed early (the client went away).
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from qfserve.chat.formats import ToolCall
from qfserve.engines.base import (
    Delta,
    EngineInfo,
    EngineStats,
    FinishReason,
    GenerationRequest,
)
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import EngineUnavailable

# Roles and contents on lines of their own, so a prompt's token count is easy to work out by hand:
# each message costs its role marker plus its words, and the prompt ends with one more marker.
TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ANSWER = "Hello from the fake engine."
_PIECE = re.compile(r"\s*\S+")


def words(text: str) -> list[str]:
    """The answer's pieces as the fake sends them: each word with the spaces before it."""
    return _PIECE.findall(text)


@dataclass(frozen=True, slots=True)
class Script:
    """What the engine does with one request.

    `error` is raised after `error_after` deltas (0: before the first). `prompt_tokens`, when set,
    rides on the last delta, as a remote upstream's own count of the prompt; `cached_tokens` too,
    as an engine's count of the prompt tokens its prefix cache served. `taken_first` sends
    an empty delta before the first token, as a remote engine does once an upstream took the
    request. The answer ends early with "length" at the request's `max_tokens`, and before the
    first stop string with "stop", as a real engine's does.
    """

    answer: str = ANSWER
    finish_reason: FinishReason = "stop"
    error: BaseException | None = None
    error_after: int = 0
    token_delay: float = 0.0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    taken_first: bool = False
    # Calls on the last delta, as a remote engine reads them from its upstream.
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass
class FakeEngine:
    """Implements `qfserve.engines.base.Engine`. Set `script` for every request, or `queue` one
    script per coming request (the queue first, then `script`)."""

    name: str = "fake"
    context_length: int = 4096
    script: Script = field(default_factory=Script)
    queue: list[Script] = field(default_factory=list)
    requests: list[GenerationRequest] = field(default_factory=list)
    # Request ids whose generator was closed before it finished: cancelled by the server.
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # the last delta was sent
    failed: list[str] = field(default_factory=list)  # the scripted error, or ended by a drain
    running: int = 0
    started: bool = False
    draining: bool = False
    closed: bool = False
    ending: bool = False  # a drain's grace is over: running generations end with an error
    available: bool = True  # False: the engine reports not ready (a dead or loading engine)
    _prompt_total: int = 0
    _generated_total: int = 0

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name=self.name,
            model_path=f"/fake/{self.name}.gguf",
            context_length=self.context_length,
            chat_template=TEMPLATE,
            bos_token="<s>",
            eos_token="</s>",
            model_name="fake scripted model",
        )

    @property
    def ready(self) -> bool:
        return self.started and self.available and not self.draining and not self.closed

    @property
    def last(self) -> GenerationRequest:
        """The last request received (fails the test if there was none)."""
        assert self.requests, "the engine received no request"
        return self.requests[-1]

    async def start(self) -> None:
        self.started = True

    async def drain(self, grace_seconds: float) -> None:
        """New requests get EngineUnavailable at once; running ones after `grace_seconds`, at
        their next token (as the real engines end them, so clients get an error, not a cut)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while self.running and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.ending = True

    async def close(self) -> None:
        self.closed = self.ending = True

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return [zlib.crc32(word.encode()) % 32000 for word in text.split()]

    def stats(self) -> EngineStats:
        return EngineStats(self.running, 0, self._prompt_total, 0, self._generated_total)

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        script = self.queue.pop(0) if self.queue else self.script
        return self._deltas(request, script)

    async def _deltas(self, request: GenerationRequest, script: Script) -> AsyncIterator[Delta]:
        if self.draining or self.closed:
            raise EngineUnavailable()
        self.running += 1
        self._prompt_total += len(request.prompt_tokens)
        # Where the request id goes at the end: closed early unless it gets further.
        outcome = self.cancelled
        try:
            if script.taken_first:
                yield Delta("", 0)
            pieces, finish = _cut(script, request)
            if script.error is not None and script.error_after == 0:
                outcome = self.failed
                raise script.error
            for index, piece in enumerate(pieces):
                if script.token_delay:
                    await asyncio.sleep(script.token_delay)
                if self.ending:
                    outcome = self.failed
                    raise EngineUnavailable("the engine is shutting down")
                self._generated_total += 1
                if index == len(pieces) - 1:
                    outcome = self.finished
                    yield Delta(
                        piece,
                        1,
                        finish,
                        script.prompt_tokens,
                        script.cached_tokens,
                        script.tool_calls,
                    )
                else:
                    yield Delta(piece, 1)
                if script.error is not None and index + 1 == script.error_after:
                    outcome = self.failed
                    raise script.error
            if not pieces:
                outcome = self.finished
                yield Delta(
                    "", 0, finish, script.prompt_tokens, script.cached_tokens, script.tool_calls
                )
        finally:
            self.running -= 1
            outcome.append(request.request_id)


def _cut(script: Script, request: GenerationRequest) -> tuple[list[str], FinishReason]:
    """The pieces to send and the finish reason, after the stop strings and `max_tokens`."""
    text, finish = script.answer, script.finish_reason
    for stop in request.sampling.stop:
        if stop and stop in text:
            text, finish = text[: text.index(stop)], "stop"
    pieces = words(text)
    if len(pieces) > request.sampling.max_tokens:
        pieces, finish = pieces[: request.sampling.max_tokens], "length"
    return pieces, finish


def fake_registry(engine: FakeEngine, *endpoints: str) -> EngineRegistry:
    """A registry serving `engine` under each endpoint name (the default endpoint if none)."""
    return EngineRegistry({name: engine for name in endpoints or ("llama_2_7b",)})
