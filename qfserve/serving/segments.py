"""A streamed answer cut into sentence segments (Qianfan V1's stream), and the rule that closing
an engine's generator aborts its generation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from qfserve.chat.segmenter import Segment, Segmenter
from qfserve.config import StreamSettings
from qfserve.engines.base import Delta
from qfserve.errors import InternalError, QfserveError
from qfserve.serving.prepared import PreparedChat, ending
from qfserve.serving.request import Ending, Piece

log = logging.getLogger(__name__)


class SegmentStream:
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
        self._prompt_tokens = chat.prompt_tokens  # as prepared: the tally may know better
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
        usage = self._chat.tally.usage(self._prompt_tokens, self._counted)
        return Piece(segment.text, segment.token_count, usage, end)

    def pieces(self) -> AsyncGenerator[Piece]:
        return self._segmented(self._chat.engine.generate(self._chat.generation))

    async def _segmented(self, generated: AsyncIterator[Delta]) -> AsyncGenerator[Piece]:
        # The deltas are read here, not by a task of their own: a delta reaches its event with no
        # hand-over, and through no generator but the guard's. Only a wait with a deadline (text
        # held for the time limit) runs the read as a task, kept across the deadline so that no
        # delta is lost to it.
        deltas = aiter(self._moderated(self._chat, generated))
        reading: asyncio.Future[Delta | BaseException | None] | None = None
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
                item: Delta | BaseException | None
                if timeout is None and reading is None:
                    item = await self._next(deltas)
                elif timeout == 0.0 and reading is None:
                    item = _DUE
                else:
                    if reading is None:
                        reading = asyncio.create_task(self._next(deltas))
                    done, _ = await asyncio.wait((reading,), timeout=timeout)
                    if done:
                        item, reading = reading.result(), None
                    else:
                        item = _DUE
                if item is _DUE:
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
                    usage = self._chat.tally.usage(self._prompt_tokens, self._counted)
                    yield Piece("", 0, usage, error=error)
                    return
                if item is None:
                    item = Delta("", 0, "stop")  # the engine ended without a reason
                if self._sent == 0 and not held and self._is_accepted(item):
                    # Taken (a remote upstream's 2xx) before any token: an empty piece lets the
                    # dialect send its response's head while the answer is thought of, not after.
                    # From here on a failure is an error event, no longer a plain error.
                    self._sent += 1
                    yield Piece("", 0, self._chat.tally.usage(self._prompt_tokens, 0))
                    continue
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
            try:
                if reading is not None:
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
                await _aclose(deltas)
            finally:
                await _aclose(generated)  # aborts the generation (see `closing`)

    def _is_accepted(self, delta: Delta) -> bool:
        """The engine's sign that it took the request: a delta with nothing in it."""
        empty = not delta.text and not delta.token_count and delta.finish_reason is None
        return empty and self._segmenter.empty

    async def _next(self, deltas: AsyncIterator[Delta]) -> Delta | BaseException | None:
        """The next delta (counted as it arrives), None when the engine ended, or its failure."""
        try:
            delta = await anext(deltas)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            raise
        except QfserveError as exc:
            return exc
        except Exception as exc:
            log.exception("request %s: the engine failed", self._chat.generation.request_id)
            return exc
        self._chat.clock.tokens(delta.token_count)
        self._generated += delta.token_count
        return delta


# The time limit passed with text held: flush it.
_DUE = Delta("", 0, None)


@contextlib.asynccontextmanager
async def closing(deltas: AsyncIterator[Delta]) -> AsyncIterator[AsyncIterator[Delta]]:
    """Close the engine's generator on any exit, cancellation included: that aborts it."""
    try:
        yield deltas
    finally:
        await _aclose(deltas)


async def _aclose(deltas: AsyncIterator[Delta]) -> None:
    aclose = getattr(deltas, "aclose", None)
    if aclose is not None:
        await aclose()
