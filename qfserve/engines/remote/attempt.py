"""One try of one generation on one replica, and the call it belongs to.

`Call.bounded` is the one place network waits happen and aiohttp's exceptions are translated;
`Attempt` reads the replica's event stream line by line and closes it when done.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from qfserve.engines.remote.pool import Replica
from qfserve.engines.remote.wire import (
    CLIENT_ERRORS,
    DONE,
    AttemptFailed,
    Chunk,
    Failure,
    is_stale_connection,
    parse_line,
    status_failure,
    translate,
)
from qfserve.errors import QfserveError

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Call:
    """One `generate` call, as `drain` and `close` see it.

    Its waits use asyncio's own timeout and cancellation rather than anyio's cancel scopes: a
    wait happens per streamed line, and a scope's set-up (finding the async library, the
    current task) was a tenth of the event loop's time in front of a fast upstream."""

    request_id: str
    failure: QfserveError | None = None  # set by drain or close: the generation ends with it
    waiting: asyncio.Task[Any] | None = None  # the task in a network wait, if any
    aborting: bool = False  # `abort` cancelled that wait

    def abort(self, failure: QfserveError) -> None:
        """Idempotent: the first failure wins; a call not waiting meets it at its next wait."""
        if self.failure is None:
            self.failure = failure
        if self.waiting is not None and not self.aborting:
            self.aborting = True
            self.waiting.cancel()

    async def bounded(self, deadline: float, step: Callable[[], Awaitable[T]]) -> T:
        """Await one network step until `deadline` (the event loop's clock) or an abort, with
        aiohttp's exceptions translated: this is the only place they enter."""
        if self.failure is not None:
            raise self.failure
        task = asyncio.current_task()
        self.waiting, self.aborting = task, False
        try:
            async with asyncio.timeout_at(deadline):
                return await step()
        # Before TimeoutError: aiohttp's own timeouts (connecting) are TimeoutErrors too.
        except CLIENT_ERRORS as exc:
            raise translate(exc) from exc
        except TimeoutError:
            raise AttemptFailed(Failure.TIMEOUT, "no answer before the deadline") from None
        except asyncio.CancelledError:
            # Our own cancellation becomes the call's failure; anyone else's goes on.
            if self.aborting and task is not None and task.uncancel() == 0:
                assert self.failure is not None
                raise self.failure from None
            raise
        finally:
            self.waiting, self.aborting = None, False


class Attempt:
    """One try on one replica: its streamed response, read line by line. It counts as
    outstanding on the replica from creation until `close`."""

    def __init__(self, replica: Replica, *, chat: bool) -> None:
        self.replica = replica
        self.chat = chat
        self.done = False  # the upstream sent `data: [DONE]`
        self._response: aiohttp.ClientResponse | None = None
        self._ended = False
        self._first: deque[Chunk] = deque()  # read while looking for the first token
        self._closed = False
        replica.outstanding += 1
        replica.requests += 1

    async def send(
        self,
        session: aiohttp.ClientSession,
        call: Call,
        url: str,
        body: dict[str, Any],
        deadline: float,
    ) -> None:
        """Send the request and wait for the answer's head: a 2xx means the replica took it."""

        async def send() -> aiohttp.ClientResponse:
            return await session.post(url, json=body)

        try:
            response = await call.bounded(deadline, send)
        except AttemptFailed as exc:
            if not is_stale_connection(exc):
                raise
            # Sent again on a new connection; a replica really gone fails again, with a
            # connection error, and is failed over as before.
            response = await call.bounded(deadline, send)
        self._response = response
        if not 200 <= response.status < 300:
            body_text = await call.bounded(deadline, response.read)
            raise status_failure(response.status, body_text.decode(errors="replace"))

    async def first_token(self, call: Call, deadline: float) -> None:
        """Read up to the first token (or the finish): the last point of failover."""

        async def until_first_token() -> None:
            while (chunk := await self._next_chunk()) is not None:
                self._first.append(chunk)
                if chunk.text or chunk.calls or chunk.finish_reason:
                    return

        await self._within(call, deadline, until_first_token)
        if self._ended and not self.done:
            raise AttemptFailed(Failure.SERVER, "the stream ended before the first token")

    async def next(self, call: Call, deadline: float) -> Chunk | None:
        """The next chunk, or None once the stream is over."""
        if self._first:
            return self._first.popleft()
        return await self._within(call, deadline, self._next_chunk)

    async def _within(
        self, call: Call, deadline: float, read: Callable[[], Awaitable[T]]
    ) -> T | None:
        """One wait for a whole read, not one per line: a timeout armed per line cost the
        gateway 50-100 us of CPU per request. Past [DONE] a failure only cut the body's end
        short: the stream is then over, with None."""
        try:
            return await call.bounded(deadline, read)
        except AttemptFailed:
            if not self.done:
                raise
            self._ended = True
            return None

    async def _next_chunk(self) -> Chunk | None:
        """The next chunk of the answer, or None at the end of the body. Past [DONE] it reads
        on to that end, so the connection goes back to the pool."""
        while not self._ended:
            line = await self._next_line()
            if line is None:
                self._ended = True
                break
            item = parse_line(line, chat=self.chat)
            if item is DONE:
                self.done = True
            elif isinstance(item, Chunk) and not self.done:
                return item
        return None

    async def _next_line(self) -> str | None:
        if self._response is None:
            return None
        line = await self._response.content.readline()
        if not line:
            return None  # the end of the body
        # Whole lines, so no character is split; what is not UTF-8 fails as JSON later.
        return line.decode(errors="replace").rstrip("\r\n")

    def close(self) -> None:
        """Idempotent. A body read to its end has already gone back to the pool; one that was
        not is closed with its connection, so the upstream sees the disconnect and stops
        generating for nobody. Synchronous: nothing to wait for, so nothing a cancellation could
        interrupt."""
        if self._closed:
            return
        self._closed = True
        self.replica.outstanding -= 1
        if self._response is not None:
            self._response.close()
