"""One try of one generation on one replica, and the call it belongs to.

`Call.bounded` is the one place network waits happen and aiohttp's exceptions are translated;
`Attempt` reads the replica's event stream line by line and closes it when done.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    """One `generate` call, as `drain` and `close` see it, and the deadline of its network waits.

    Its waits are bounded by one timer for the whole call, not one per wait: a streamed answer
    waits once per chunk, and each wait only moves `deadline` on. The timer, when it fires, finds
    whether the deadline moved since it was set: then it is set again for the deadline as it
    stands, else the wait under way is cancelled (as `asyncio.timeout` would, and `abort` does).
    """

    request_id: str
    failure: QfserveError | None = None  # set by drain or close: the generation ends with it
    waiting: asyncio.Task[Any] | None = None  # the task in a network wait, if any
    aborting: bool = False  # `abort` cancelled that wait
    expired: bool = False  # the deadline cancelled that wait
    deadline: float = 0.0  # of the current or last wait, on the event loop's clock
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    _timer_at: float = 0.0  # when `_timer` fires

    def abort(self, failure: QfserveError) -> None:
        """Idempotent: the first failure wins; a call not waiting meets it at its next wait."""
        if self.failure is None:
            self.failure = failure
        if self.waiting is not None and not self.aborting and not self.expired:
            self.aborting = True
            self.waiting.cancel()

    async def bounded(self, deadline: float, step: Callable[[], Awaitable[T]]) -> T:
        """Await one network step until `deadline` (the event loop's clock) or an abort, with
        aiohttp's exceptions translated: this is the only place they enter."""
        if self.failure is not None:
            raise self.failure
        task = asyncio.current_task()
        self.deadline = deadline
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        self.waiting = task
        try:
            return await step()
        # Before TimeoutError: aiohttp's own timeouts (connecting) are TimeoutErrors too.
        except CLIENT_ERRORS as exc:
            raise translate(exc) from exc
        except TimeoutError:
            raise AttemptFailed(Failure.TIMEOUT, "no answer before the deadline") from None
        except asyncio.CancelledError:
            # Our own cancellation becomes the call's failure or a timeout; anyone else's goes on.
            if (self.aborting or self.expired) and task is not None and task.uncancel() == 0:
                if self.aborting:
                    assert self.failure is not None
                    raise self.failure from None
                raise AttemptFailed(Failure.TIMEOUT, "no answer before the deadline") from None
            raise
        finally:
            self.waiting, self.aborting, self.expired = None, False, False

    def close(self) -> None:
        """Idempotent: the timer goes, so that nothing of the call outlives it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.deadline > self._timer_at:
            self._arm(self.deadline)  # a later wait moved the deadline on
        elif self.waiting is not None and not self.aborting and not self.expired:
            self.expired = True
            self.waiting.cancel()
        # A deadline that passes between waits is met by none: the next wait sets its own.


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
        self._lines: deque[bytes] = deque()  # read whole, not parsed yet
        self._partial = b""  # the start of a line still arriving
        self._max_line = 0  # bytes: the response's read buffer's high-water mark
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
        self._max_line = response.content.get_read_buffer_limits()[1]
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

        # One wait for the whole read, not one per line.
        try:
            await call.bounded(deadline, until_first_token)
        except AttemptFailed:
            if not self.done:
                raise
            self._ended = True  # past [DONE] a failure only cut the body's end short
        if self._ended and not self.done:
            raise AttemptFailed(Failure.SERVER, "the stream ended before the first token")

    async def next(self, call: Call, deadline: float) -> Chunk | None:
        """The next chunk, or None once the stream is over."""
        if self._first:
            return self._first.popleft()
        try:
            return await call.bounded(deadline, self._next_chunk)
        except AttemptFailed:
            if not self.done:
                raise
            self._ended = True  # as in `first_token`
            return None

    async def _next_chunk(self) -> Chunk | None:
        """The next chunk of the answer, or None at the end of the body. Past [DONE] it reads
        on to that end, so the connection goes back to the pool. One network read serves every
        line it brought (an event and the blank line after it): one wait per read, not per line.
        """
        if self._response is None:
            self._ended = True
            return None
        content, lines = self._response.content, self._lines
        while True:
            while lines:
                line = lines.popleft()
                if not line:
                    continue  # the blank line that ends an event
                # Whole lines, so no character is split; what is not UTF-8 fails as JSON later.
                item = parse_line(line.decode(errors="replace").rstrip("\r"), chat=self.chat)
                if item is DONE:
                    self.done = True
                elif isinstance(item, Chunk) and not self.done:
                    return item
            if self._ended:
                return None
            data = await content.readany()
            if not data:
                self._ended = True  # the end of the body; a last line may lack its newline
                lines.append(self._partial)
                continue
            read = self._partial + data
            *whole, self._partial = read.split(b"\n")
            if (
                len(read) > self._max_line
                and max(map(len, (*whole, self._partial))) > self._max_line
            ):
                # What aiohttp's own readline refuses too: not the OpenAI streaming format.
                raise AttemptFailed(Failure.PROTOCOL, f"a line over {self._max_line} bytes")
            lines.extend(whole)

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
