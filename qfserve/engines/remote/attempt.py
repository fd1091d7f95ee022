"""One try of one generation on one replica, and the call it belongs to.

`Call.bounded` is the one place network waits happen and httpx's exceptions are translated;
`Attempt` reads the replica's event stream chunk by chunk and closes it, shielded, when done.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx

from qfserve.engines.remote.pool import Replica
from qfserve.engines.remote.wire import (
    DONE,
    STALE_CONNECTION,
    AttemptFailed,
    Chunk,
    Failure,
    parse_line,
    status_failure,
    translate,
)
from qfserve.errors import QfserveError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Closing a response only writes a FIN; bounded anyway so a wedged socket cannot hold a
# cancelled request.
_CLOSE_SECONDS = 2.0


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
        httpx's exceptions translated: this is the only place they enter."""
        if self.failure is not None:
            raise self.failure
        task = asyncio.current_task()
        self.waiting, self.aborting = task, False
        try:
            async with asyncio.timeout_at(deadline):
                return await step()
        except TimeoutError:
            raise AttemptFailed(Failure.TIMEOUT, "no answer before the deadline") from None
        except asyncio.CancelledError:
            # Our own cancellation becomes the call's failure; anyone else's goes on.
            if self.aborting and task is not None and task.uncancel() == 0:
                assert self.failure is not None
                raise self.failure from None
            raise
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise translate(exc) from exc
        finally:
            self.waiting, self.aborting = None, False


class Attempt:
    """One try on one replica: its streamed response, read chunk by chunk. It counts as
    outstanding on the replica from creation until `close`."""

    def __init__(self, replica: Replica, *, chat: bool) -> None:
        self.replica = replica
        self.chat = chat
        self.done = False  # the upstream sent `data: [DONE]`
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._ended = False
        self._first: deque[Chunk] = deque()  # read while looking for the first token
        self._closed = False
        replica.outstanding += 1
        replica.requests += 1

    async def open(
        self, client: httpx.AsyncClient, call: Call, request: httpx.Request, deadline: float
    ) -> None:
        """Send the request and read up to the first token: the last point of failover."""
        try:
            response = await call.bounded(deadline, lambda: client.send(request, stream=True))
        except AttemptFailed as exc:
            if not isinstance(exc.__cause__, STALE_CONNECTION):
                raise
            # Sent again on a new connection; a replica really gone fails again, with a
            # connection error, and is failed over as before.
            response = await call.bounded(deadline, lambda: client.send(request, stream=True))
        self._response = response
        if not response.is_success:
            body = await call.bounded(deadline, response.aread)
            raise status_failure(response.status_code, body.decode(errors="replace"))
        self._lines = response.aiter_lines()
        while (chunk := await self._read(call, deadline)) is not None:
            self._first.append(chunk)
            if chunk.text or chunk.finish_reason:
                return
        if not self.done:
            raise AttemptFailed(Failure.SERVER, "the stream ended before the first token")

    async def next(self, call: Call, deadline: float) -> Chunk | None:
        """The next chunk, or None once the stream is over."""
        if self._first:
            return self._first.popleft()
        return await self._read(call, deadline)

    async def _read(self, call: Call, deadline: float) -> Chunk | None:
        while not self._ended:
            try:
                line = await call.bounded(deadline, self._next_line)
            except AttemptFailed:
                if not self.done:
                    raise
                line = None  # past [DONE] only the end of the body was missing
            if line is None:
                self._ended = True
                break
            item = parse_line(line, chat=self.chat)
            if item is DONE:
                # Read on to the end of the body, so the connection goes back to the pool.
                self.done = True
            elif isinstance(item, Chunk) and not self.done:
                return item
        return None

    async def _next_line(self) -> str | None:
        if self._lines is None:
            return None
        try:
            return await anext(self._lines)
        except StopAsyncIteration:
            return None

    async def close(self) -> None:
        """Idempotent. Shielded: a cancelled generator must still close the connection, or the
        upstream would keep generating for nobody."""
        if self._closed:
            return
        self._closed = True
        self.replica.outstanding -= 1
        if self._response is None:
            return
        with anyio.move_on_after(_CLOSE_SECONDS, shield=True):
            try:
                await self._response.aclose()
            except httpx.HTTPError as exc:
                log.debug("closing a response from %s: %r", self.replica.url, exc)
