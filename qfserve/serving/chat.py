"""The chat flow shared by every API dialect, between the routes and the engine: what to generate,
and how the answer comes back (whole, or as sentence segments). No HTTP here: routes render.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import anyio
import anyio.to_thread

from qfserve.chat.conversation import Message, check_messages, fit_conversation
from qfserve.chat.formats import (
    JsonFormat,
    ToolCall,
    grammar_for,
    instruction,
    openai_response_format,
    schema_text,
)
from qfserve.chat.params import (
    QIANFAN,
    DialectRules,
    RequestedSampling,
    resolve_sampling,
    structured_guard,
)
from qfserve.chat.safety import (
    ModeratorSource,
    StreamGuard,
    UnreadableVerdict,
    Verdict,
    build_guard_prompt,
    parse_guard_verdict,
)
from qfserve.chat.safety import check_messages as check_user_messages
from qfserve.chat.template import ChatTemplate
from qfserve.chat.tools import CallWatch, ToolUse, call_grammar
from qfserve.config import EndpointSettings, Settings
from qfserve.engines.base import Delta, Engine, FinishReason, GenerationRequest, SamplingParams
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import (
    EngineUnavailable,
    InternalError,
    InvalidArgument,
    QfserveError,
    TooManyCharacters,
    UnknownEndpoint,
)
from qfserve.metrics import Metrics
from qfserve.serving.prepared import Answer, PreparedChat, ending
from qfserve.serving.request import Piece
from qfserve.serving.segments import SegmentStream, closing

log = logging.getLogger(__name__)


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
        tools: ToolUse | None = None,
        *,
        json_format: JsonFormat | None = None,
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
        grammar = None
        if json_format is not None:
            grammar = await self._grammar(json_format)
            # Told as well as constrained: see `instruction`.
            system = (
                f"{system}\n\n{instruction(json_format)}" if system else instruction(json_format)
            )
        template = self._template(endpoint, engine)
        # Forgetting renders and tokenizes the conversation: on a worker thread, so that a long
        # one never holds up the event loop (llama.cpp's tokenizer only reads the vocabulary).
        # A short one costs less than the hop to a thread and back.
        fit = functools.partial(
            fit_conversation,
            messages,
            system,
            render=functools.partial(template.render, tools=tools),
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
        fields = _tool_fields(tools, system, fitted.kept_messages)
        forced_call = fields.pop("grammar", None)
        if grammar is not None and forced_call is not None:
            raise InvalidArgument(
                "Invalid Argument: response_format cannot shape an answer that must be a tool call"
            )
        if grammar is not None or forced_call is not None:
            sampling = dataclasses.replace(
                sampling, loop_guard=structured_guard(sampling.loop_guard)
            )
        generation = GenerationRequest(
            request_id,
            fitted.prompt_tokens,
            sampling,
            turns,
            fitted.prompt_text,
            grammar=grammar or forced_call,
            response_format=openai_response_format(json_format) if json_format else None,
            **fields,
        )
        guard = StreamGuard(self._moderators.moderator) if self._moderators else None
        clock = self._metrics.clock(endpoint.name)
        return PreparedChat(engine, generation, clock, guard, tools=tools)

    async def _grammar(self, json_format: JsonFormat) -> str:
        """The answer's grammar, which also refuses a schema it cannot be made from (before any
        generation). Converting a large schema takes milliseconds: off the event loop, as
        fitting a long conversation."""
        text = schema_text(json_format)
        convert = functools.partial(grammar_for, text, json_format.strict)
        if len(text) <= _SHORT_SCHEMA_CHARS:
            return convert()
        return await anyio.to_thread.run_sync(convert, limiter=self._fitting)

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
        async with closing(engine.generate(request)) as deltas:
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
        calls: tuple[ToolCall, ...] = ()
        async with closing(chat.engine.generate(chat.generation)) as generated:
            async for delta in _with_calls(chat, self._moderated(chat, generated)):
                chat.clock.tokens(delta.token_count)
                parts.append(delta.text)
                tokens += delta.token_count
                finish = delta.finish_reason or finish
                calls = delta.tool_calls or calls
        chat.clock.finish(tokens)
        usage = chat.tally.usage(chat.prompt_tokens, tokens)
        flagged = chat.tally.hit is not None
        if flagged:
            return Answer(self._settings.safety.refusal, ending(finish, chat.tally), usage)
        end = ending(finish, chat.tally, called=bool(calls))
        return Answer("".join(parts), end, usage, calls)

    async def pieces(self, chat: PreparedChat) -> AsyncGenerator[Piece]:
        """The answer as the engine produces it, through the safety guard, one piece a delta;
        the last piece has an ending, or an error if the engine failed after the first piece
        (a failure before it is raised). Closing this generator aborts the generation."""
        generated = 0
        started = False
        prompt = chat.prompt_tokens
        async with closing(chat.engine.generate(chat.generation)) as deltas:
            try:
                async for delta in _with_calls(chat, self._moderated(chat, deltas)):
                    chat.clock.tokens(delta.token_count)
                    generated += delta.token_count
                    usage = chat.tally.usage(prompt, generated)
                    if delta.finish_reason is None:
                        started = True
                        yield Piece(delta.text, delta.token_count, usage)
                        continue
                    chat.clock.finish(generated)
                    calls = () if chat.tally.hit is not None else delta.tool_calls
                    end = ending(delta.finish_reason, chat.tally, called=bool(calls))
                    yield Piece(delta.text, delta.token_count, usage, end, tool_calls=calls)
                    return
            except QfserveError as error:
                if not started:
                    raise
                yield Piece("", 0, chat.tally.usage(prompt, generated), error=error)
                return
            except Exception as exc:
                if not started:
                    raise
                log.error("request %s: the engine failed", chat.generation.request_id, exc_info=exc)
                usage = chat.tally.usage(prompt, generated)
                yield Piece("", 0, usage, error=InternalError())
                return
        # The engine ended without a reason: a finished answer all the same.
        chat.clock.finish(generated)
        yield Piece("", 0, chat.tally.usage(prompt, generated), "stop")

    def segments(self, chat: PreparedChat) -> AsyncGenerator[Piece]:
        """Sentence segments as they complete, the last with an ending or an error. The
        generator must be closed (aclose) by its consumer; closing it aborts the generation."""
        return SegmentStream(chat, self._settings.stream, self._moderated).pieces()

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
            if text == delta.text:
                yield delta  # most deltas pass the guard as they came
            elif delta.finish_reason is None:
                yield Delta(text, delta.token_count)  # the engine's counts come on its last delta
            else:
                yield replace(delta, text=text)

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
# Schemas up to this many characters (as compact JSON) are converted on the event loop itself.
_SHORT_SCHEMA_CHARS = 1000


def _is_short(messages: list[Message], system: str | None) -> bool:
    if len(messages) > _SHORT_MESSAGES:
        return False
    return len(system or "") + sum(len(m.content) for m in messages) <= _SHORT_CHARS


def _with_calls(chat: PreparedChat, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """The answer read for calls of the tools on offer (see `_watched_for_calls`); without
    tools, the deltas themselves, with no generator between them and the answer."""
    if chat.tools is None:
        return deltas
    return _watched_for_calls(chat.tools, deltas)


async def _watched_for_calls(tools: ToolUse, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """Text that may be a call is held back, and the calls it makes come on the last delta (as
    a remote engine's own do). A source that ends without a finish still gives back what was
    held, on a last delta of its own."""
    watch = CallWatch(tools)
    async for delta in deltas:
        text = watch.feed(delta.text)
        if delta.finish_reason is None:
            yield replace(delta, text=text)
            continue
        held, calls = watch.finish()
        yield replace(delta, text=text + held, tool_calls=delta.tool_calls or calls)
        return
    held, calls = watch.finish()
    if held or calls:
        yield Delta(held, 0, "stop", tool_calls=calls)


def _tool_fields(
    tools: ToolUse | None, system: str | None, kept: Sequence[Message]
) -> dict[str, Any]:
    """The generation's tool fields: the grammar of a forced call, and for remote upstreams
    the tools on offer and the calls and results in the conversation."""
    fields: dict[str, Any] = {}
    if tools is not None:
        fields.update(
            grammar=call_grammar(tools),
            tools=tools.tools,
            tool_choice=tools.choice,
            parallel_tool_calls=tools.parallel,
        )
    if any(m.tool_calls or m.tool_call_id for m in kept):
        lead: tuple[tuple[tuple[ToolCall, ...], str | None], ...] = (((), None),) if system else ()
        fields["message_calls"] = lead + tuple((m.tool_calls, m.tool_call_id) for m in kept)
    return fields
