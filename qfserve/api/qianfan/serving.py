"""The Qianfan chat flow, between the routes and the engine: who is calling, what to generate,
and how the answer comes back (whole, or as sentence segments). No HTTP here: routes render.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from qfserve.chat.conversation import Message, check_messages, drop_oldest_round, forget_to_fit
from qfserve.chat.params import RequestedSampling, resolve_sampling
from qfserve.chat.segmenter import Segment, Segmenter
from qfserve.chat.template import ChatTemplate
from qfserve.config import EndpointSettings, Settings, StreamSettings
from qfserve.engines.base import Delta, Engine, FinishReason, GenerationRequest
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import (
    EngineUnavailable,
    InternalError,
    QfserveError,
    RuleViolation,
    UnknownEndpoint,
)
from qfserve.metrics import Metrics, RequestClock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """A validated request, its prompt rendered and counted, ready for the engine."""

    engine: Engine
    generation: GenerationRequest
    clock: RequestClock

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt_tokens)


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason

    @property
    def is_truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One segment of a streamed answer; the last has `is_end`, or an `error` after a failure."""

    sentence_id: int
    text: str
    completion_tokens: int  # this segment's
    total_tokens: int  # the prompt's plus every completion token so far
    is_end: bool
    is_truncated: bool = False
    error: QfserveError | None = None


class QianfanServing:
    def __init__(self, settings: Settings, engines: EngineRegistry, metrics: Metrics) -> None:
        self._settings = settings
        self._engines = engines
        self._metrics = metrics
        self._templates: dict[str, ChatTemplate] = {}

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

    def prepare(
        self,
        request_id: str,
        endpoint_name: str,
        messages: list[Message],
        system: str | None,
        asked: RequestedSampling,
    ) -> PreparedChat:
        endpoint, engine = self.endpoint(endpoint_name)
        check_messages(messages, max_question_chars=endpoint.max_question_chars)
        if system and len(system) > endpoint.max_system_chars:
            raise RuleViolation(f"the max length of system is {endpoint.max_system_chars}")
        sampling = resolve_sampling(asked, endpoint)
        template = self._template(endpoint, engine)
        kept: list[Message] | None = forget_to_fit(
            messages, max_total_chars=endpoint.max_total_chars
        )
        # The prompt must also leave room for the answer in the model's context: forget further
        # rounds until it does; a lone question too long for that is the client's error.
        context = engine.info.context_length
        while kept is not None:
            prompt = engine.tokenize(template.render(kept, system))
            if len(prompt) + sampling.max_tokens <= context:
                break
            kept = drop_oldest_round(kept)
        else:
            raise RuleViolation(
                f"the prompt and max_output_tokens ({sampling.max_tokens}) exceed the model's "
                f"context of {context} tokens"
            )
        generation = GenerationRequest(request_id, prompt, sampling)
        return PreparedChat(engine, generation, self._metrics.clock(endpoint.name))

    def tokenize(self, endpoint_name: str, text: str) -> int:
        _, engine = self.endpoint(endpoint_name)
        return len(engine.tokenize(text, special=False))

    async def answer(self, chat: PreparedChat) -> Answer:
        """The whole answer. Cancelling this (client gone) aborts the generation."""
        parts: list[str] = []
        tokens = 0
        finish: FinishReason = "stop"
        async with _closing(chat.engine.generate(chat.generation)) as deltas:
            async for delta in deltas:
                chat.clock.tokens(delta.token_count)
                parts.append(delta.text)
                tokens += delta.token_count
                finish = delta.finish_reason or finish
        chat.clock.finish(tokens)
        return Answer("".join(parts), chat.prompt_tokens, tokens, finish)

    def stream(self, chat: PreparedChat) -> AsyncIterator[StreamEvent]:
        """Sentence segments as they complete. The generator must be closed (aclose) by its
        consumer; closing it aborts the generation."""
        return _SegmentStream(chat, self._settings.stream).events()

    def _template(self, endpoint: EndpointSettings, engine: Engine) -> ChatTemplate:
        template = self._templates.get(endpoint.name)
        if template is None:
            template = ChatTemplate(engine.info, endpoint.chat_template)
            self._templates[endpoint.name] = template
        return template


class _SegmentStream:
    """Pumps an engine's deltas into sentence segments, flushing on size, sentence end and time.

    A completed segment is held until the next delta shows whether more follows, so the last
    event can say `is_end` without an empty extra event; the time limit flushes it regardless.
    """

    def __init__(self, chat: PreparedChat, settings: StreamSettings) -> None:
        self._chat = chat
        self._settings = settings
        self._segmenter = Segmenter(
            min_chars=settings.min_segment_chars, max_tokens=settings.max_segment_tokens
        )
        self._sentence_id = 0
        self._total = chat.prompt_tokens
        self._generated = 0  # counted by the pump as deltas arrive

    def _event(self, segment: Segment, *, is_end: bool, truncated: bool = False) -> StreamEvent:
        self._total += segment.token_count
        event = StreamEvent(
            self._sentence_id, segment.text, segment.token_count, self._total, is_end, truncated
        )
        self._sentence_id += 1
        return event

    async def events(self) -> AsyncIterator[StreamEvent]:
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
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    for segment in held:
                        yield self._event(segment, is_end=False)
                    held = []
                    if not self._segmenter.empty:
                        yield self._event(self._segmenter.flush(), is_end=False)
                    opened_at = None
                    continue
                if isinstance(item, BaseException):
                    if self._sentence_id == 0 and not held:
                        raise item  # nothing sent yet: the route answers with a plain error
                    for segment in held:
                        yield self._event(segment, is_end=False)
                    error = item if isinstance(item, QfserveError) else InternalError()
                    yield StreamEvent(self._sentence_id, "", 0, self._total, True, error=error)
                    return
                if item is None:
                    item = Delta("", 0, "stop")
                completed = self._segmenter.push(item.text, item.token_count)
                if item.finish_reason is not None:
                    last = [*held, *completed, self._segmenter.flush()]
                    if len(last) > 1 and not last[-1].text and not last[-1].token_count:
                        last.pop()
                    truncated = item.finish_reason == "length"
                    self._chat.clock.finish(self._generated)
                    for index, segment in enumerate(last):
                        is_end = index == len(last) - 1
                        yield self._event(segment, is_end=is_end, truncated=truncated)
                    return
                # A delta that does not finish means more follows: what was held can go.
                for segment in held:
                    yield self._event(segment, is_end=False)
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
            async with _closing(self._chat.engine.generate(self._chat.generation)) as deltas:
                async for delta in deltas:
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
