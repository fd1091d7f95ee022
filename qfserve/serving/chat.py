"""The chat flow shared by every API dialect, between the routes and the engine: what to generate,
and how the answer comes back (whole, or as sentence segments). No HTTP here: routes render.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from qfserve.chat.conversation import Message, check_messages, fit_conversation
from qfserve.chat.params import QIANFAN, DialectRules, RequestedSampling, resolve_sampling
from qfserve.chat.safety import (
    Hit,
    ModeratorSource,
    StreamGuard,
    UnreadableVerdict,
    Verdict,
    build_guard_prompt,
    parse_guard_verdict,
)
from qfserve.chat.safety import check_messages as check_user_messages
from qfserve.chat.segmenter import Segment, Segmenter
from qfserve.chat.template import ChatTemplate
from qfserve.config import EndpointSettings, Settings, StreamSettings
from qfserve.engines.base import Delta, Engine, FinishReason, GenerationRequest, SamplingParams
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import (
    EngineUnavailable,
    InternalError,
    QfserveError,
    TooManyCharacters,
    UnknownEndpoint,
)
from qfserve.metrics import Metrics, RequestClock
from qfserve.serving.request import Ending, Piece, Usage

log = logging.getLogger(__name__)


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

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt_tokens)


@dataclass(frozen=True, slots=True)
class Answer:
    text: str  # the refusal when the answer was flagged
    ending: Ending
    usage: Usage


def ending(finish: FinishReason, tally: Tally) -> Ending:
    if tally.hit is not None:
        return "content_filter"
    return "length" if finish == "length" else "stop"


class ChatServing:
    def __init__(
        self,
        settings: Settings,
        engines: EngineRegistry,
        metrics: Metrics,
        moderators: ModeratorSource | None,
    ) -> None:
        self._settings = settings
        self._engines = engines
        self._metrics = metrics
        self._moderators = moderators
        self._templates: dict[str, ChatTemplate] = {}
        # Threads of their own for preparing long conversations, so that many at once cannot take
        # the shared pool from the store's and the ledger's blocking calls.
        self._fitting = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))

    @property
    def refusal(self) -> str:
        return self._settings.safety.refusal

    @property
    def default_endpoint(self) -> str:
        return self._settings.endpoints[0].name

    def endpoint(self, name: str) -> tuple[EndpointSettings, Engine]:
        settings = self._settings.endpoint(name)
        engine = self._engines.get(name)
        if settings is None or engine is None:
            raise UnknownEndpoint()
        if not engine.ready:
            raise EngineUnavailable()
        return settings, engine

    async def prepare(
        self,
        request_id: str,
        endpoint_name: str,
        messages: list[Message],
        system: str | None,
        asked: RequestedSampling,
        rules: DialectRules = QIANFAN,
    ) -> PreparedChat:
        endpoint, engine = self.endpoint(endpoint_name)
        check_messages(
            messages,
            max_question_chars=endpoint.max_question_chars,
            max_messages=endpoint.max_messages,
        )
        if system and len(system) > endpoint.max_system_chars:
            raise TooManyCharacters(f"the max length of system is {endpoint.max_system_chars}")
        sampling = resolve_sampling(asked, endpoint, rules)
        template = self._template(endpoint, engine)
        # Forgetting renders and tokenizes the conversation: on a worker thread, so that a long
        # one never holds up the event loop (llama.cpp's tokenizer only reads the vocabulary).
        # A short one costs less than the hop to a thread and back.
        fit = functools.partial(
            fit_conversation,
            messages,
            system,
            render=template.render,
            tokenize=engine.tokenize,
            max_total_chars=endpoint.max_total_chars,
            context_length=engine.info.context_length,
            max_tokens=sampling.max_tokens,
        )
        if _is_short(messages, system):
            fitted = fit()
        else:
            fitted = await anyio.to_thread.run_sync(fit, limiter=self._fitting)
        # The rendered prompt for engines that take token ids or text; the kept conversation for
        # remote engines, whose upstreams apply their own model's template.
        turns = ((("system", system),) if system else ()) + tuple(
            (m.role, m.content) for m in fitted.kept_messages
        )
        generation = GenerationRequest(
            request_id, fitted.prompt_tokens, sampling, turns, fitted.prompt_text
        )
        guard = StreamGuard(self._moderators.moderator) if self._moderators else None
        return PreparedChat(engine, generation, self._metrics.clock(endpoint.name), guard)

    async def screen(self, messages: list[Message]) -> Verdict | None:
        """Check every user message as the client sent it, before any generation."""
        if self._moderators is None:
            return None
        verdict = check_user_messages(messages, self._moderators.moderator)
        if verdict is None and self._settings.safety.model_endpoint:
            verdict = await self._classify(messages)
        if verdict is not None:
            where = "question" if verdict.ban_round == -1 else "history"
            self._metrics.safety_hit(verdict.hit.category, where)
        return verdict

    async def _classify(self, messages: list[Message]) -> Verdict | None:
        """The optional model-based check: a Llama Guard style prompt on a served endpoint."""
        engine = self._engines.get(self._settings.safety.model_endpoint)
        if engine is None or not engine.ready:
            raise EngineUnavailable("the safety classifier endpoint is not available")
        prompt = engine.tokenize(build_guard_prompt(messages))
        request = GenerationRequest(
            "guard", prompt, SamplingParams(max_tokens=12, temperature=0.0, top_k=1)
        )
        text = ""
        async with _closing(engine.generate(request)) as deltas:
            async for delta in deltas:
                text += delta.text
        try:
            hit = parse_guard_verdict(text)
        except UnreadableVerdict:
            # The word lists still apply: an unreadable verdict lets the question through.
            log.warning("the safety classifier's verdict could not be read")
            return None
        return Verdict(hit, -1) if hit is not None else None

    def context_length(self, endpoint_name: str) -> int | None:
        """The model's context per sequence, once its engine is loaded."""
        engine = self._engines.get(endpoint_name)
        return engine.info.context_length if engine is not None and engine.ready else None

    def tokenize(self, endpoint_name: str, text: str) -> int:
        _, engine = self.endpoint(endpoint_name)
        return len(engine.tokenize(text, special=False))

    async def answer(self, chat: PreparedChat) -> Answer:
        """The whole answer. Cancelling this (client gone) aborts the generation."""
        parts: list[str] = []
        tokens = 0
        finish: FinishReason = "stop"
        async with _closing(chat.engine.generate(chat.generation)) as generated:
            async for delta in self._moderated(chat, generated):
                chat.clock.tokens(delta.token_count)
                parts.append(delta.text)
                tokens += delta.token_count
                finish = delta.finish_reason or finish
        chat.clock.finish(tokens)
        usage = chat.tally.usage(chat.prompt_tokens, tokens)
        flagged = chat.tally.hit is not None
        text = self._settings.safety.refusal if flagged else "".join(parts)
        return Answer(text, ending(finish, chat.tally), usage)

    async def pieces(self, chat: PreparedChat) -> AsyncGenerator[Piece]:
        """The answer as the engine produces it, through the safety guard, one piece a delta;
        the last piece has an ending, or an error if the engine failed after the first piece
        (a failure before it is raised). Closing this generator aborts the generation."""
        generated = 0
        started = False
        async with _closing(chat.engine.generate(chat.generation)) as deltas:
            try:
                async for delta in self._moderated(chat, deltas):
                    chat.clock.tokens(delta.token_count)
                    generated += delta.token_count
                    usage = chat.tally.usage(chat.prompt_tokens, generated)
                    if delta.finish_reason is None:
                        started = True
                        yield Piece(delta.text, delta.token_count, usage)
                        continue
                    chat.clock.finish(generated)
                    end = ending(delta.finish_reason, chat.tally)
                    yield Piece(delta.text, delta.token_count, usage, end)
                    return
            except QfserveError as error:
                if not started:
                    raise
                yield Piece("", 0, chat.tally.usage(chat.prompt_tokens, generated), error=error)
                return
            except Exception as exc:
                if not started:
                    raise
                log.error("request %s: the engine failed", chat.generation.request_id, exc_info=exc)
                usage = chat.tally.usage(chat.prompt_tokens, generated)
                yield Piece("", 0, usage, error=InternalError())
                return
        # The engine ended without a reason: a finished answer all the same.
        chat.clock.finish(generated)
        yield Piece("", 0, chat.tally.usage(chat.prompt_tokens, generated), "stop")

    def segments(self, chat: PreparedChat) -> AsyncGenerator[Piece]:
        """Sentence segments as they complete, the last with an ending or an error. The
        generator must be closed (aclose) by its consumer; closing it aborts the generation."""
        return _SegmentStream(chat, self._settings.stream, self._moderated).pieces()

    async def _moderated(
        self, chat: PreparedChat, deltas: AsyncIterator[Delta]
    ) -> AsyncIterator[Delta]:
        """The answer through its safety guard: held back only while a listed term could still
        complete; on a hit the flagged text is dropped and the answer ends there (returning
        lets the caller close the engine's generator, which frees the sequence)."""
        guard, tally = chat.guard, chat.tally
        async for delta in deltas:
            if delta.prompt_tokens is not None:
                tally.prompt_tokens = delta.prompt_tokens
            if delta.cached_tokens is not None:
                tally.cached_tokens = delta.cached_tokens
            if guard is None:
                yield delta
                continue
            text = guard.feed(delta.text)
            if delta.finish_reason is not None and guard.hit is None:
                text += guard.flush()
            if guard.hit is not None:
                tally.hit = guard.hit
                self._metrics.safety_hit(guard.hit.category, "answer")
                yield Delta(text, delta.token_count, "stop")
                return
            yield Delta(text, delta.token_count, delta.finish_reason)

    def _template(self, endpoint: EndpointSettings, engine: Engine) -> ChatTemplate:
        template = self._templates.get(endpoint.name)
        if template is None:
            template = ChatTemplate(engine.info, endpoint.chat_template)
            self._templates[endpoint.name] = template
        return template


# At most this many messages and characters (contents and system prompt) are fitted on the
# event loop itself.
_SHORT_MESSAGES = 8
_SHORT_CHARS = 2000


def _is_short(messages: list[Message], system: str | None) -> bool:
    if len(messages) > _SHORT_MESSAGES:
        return False
    return len(system or "") + sum(len(m.content) for m in messages) <= _SHORT_CHARS


class _SegmentStream:
    """Pumps an engine's deltas into sentence segments, flushing on size, sentence end and time.

    A completed segment is held until the next delta shows whether more follows, so the last
    event can say `is_end` without an empty extra event; the time limit flushes it regardless.
    """

    def __init__(
        self,
        chat: PreparedChat,
        settings: StreamSettings,
        moderated: Callable[[PreparedChat, AsyncIterator[Delta]], AsyncIterator[Delta]],
    ) -> None:
        self._chat = chat
        self._moderated = moderated
        self._settings = settings
        self._segmenter = Segmenter(
            min_chars=settings.min_segment_chars, max_tokens=settings.max_segment_tokens
        )
        self._sent = 0  # pieces yielded
        self._counted = 0  # completion tokens in the pieces yielded
        self._generated = 0  # counted by the pump as deltas arrive

    def _piece(self, segment: Segment, end: Ending | None = None) -> Piece:
        self._sent += 1
        self._counted += segment.token_count
        usage = self._chat.tally.usage(self._chat.prompt_tokens, self._counted)
        return Piece(segment.text, segment.token_count, usage, end)

    async def pieces(self) -> AsyncGenerator[Piece]:
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        pump = asyncio.create_task(self._pump(queue))
        held: list[Segment] = []
        opened_at: float | None = None
        try:
            while True:
                timeout = None
                if opened_at is not None or held:
                    start = opened_at if opened_at is not None else time.monotonic()
                    timeout = max(
                        0.0, start + self._settings.max_segment_seconds - time.monotonic()
                    )
                try:
                    # asyncio.timeout, not wait_for: no task created per delta.
                    async with asyncio.timeout(timeout):
                        item = await queue.get()
                except TimeoutError:
                    for segment in held:
                        yield self._piece(segment)
                    held = []
                    if not self._segmenter.empty:
                        yield self._piece(self._segmenter.flush())
                    opened_at = None
                    continue
                if isinstance(item, BaseException):
                    if self._sent == 0 and not held:
                        raise item  # nothing sent yet: the dialect answers with a plain error
                    for segment in held:
                        yield self._piece(segment)
                    error = item if isinstance(item, QfserveError) else InternalError()
                    usage = self._chat.tally.usage(self._chat.prompt_tokens, self._counted)
                    yield Piece("", 0, usage, error=error)
                    return
                if item is None:
                    item = Delta("", 0, "stop")
                completed = self._segmenter.push(item.text, item.token_count)
                if item.finish_reason is not None:
                    last = [*held, *completed, self._segmenter.flush()]
                    if len(last) > 1 and not last[-1].text and not last[-1].token_count:
                        last.pop()
                    end = ending(item.finish_reason, self._chat.tally)
                    self._chat.clock.finish(self._generated)
                    for segment in last[:-1]:
                        yield self._piece(segment)
                    yield self._piece(last[-1], end)
                    return
                # A delta that does not finish means more follows: what was held can go.
                for segment in held:
                    yield self._piece(segment)
                held = completed
                if completed:
                    opened_at = None
                if not self._segmenter.empty and opened_at is None:
                    opened_at = time.monotonic()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self, queue: asyncio.Queue[Delta | BaseException | None]) -> None:
        try:
            async with _closing(self._chat.engine.generate(self._chat.generation)) as generated:
                async for delta in self._moderated(self._chat, generated):
                    self._chat.clock.tokens(delta.token_count)
                    self._generated += delta.token_count
                    queue.put_nowait(delta)
            queue.put_nowait(None)  # the engine ended; in case its last delta had no reason
        except asyncio.CancelledError:
            raise
        except QfserveError as exc:
            queue.put_nowait(exc)
        except Exception as exc:
            log.exception("request %s: the engine failed", self._chat.generation.request_id)
            queue.put_nowait(exc)


@contextlib.asynccontextmanager
async def _closing(deltas: AsyncIterator[Delta]) -> AsyncIterator[AsyncIterator[Delta]]:
    """Close the engine's generator on any exit, cancellation included: that aborts it."""
    try:
        yield deltas
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
