"""Disconnect-aware ASGI plumbing shared by the API dialects.

A client that goes away must stop its generation at once, so both the plain and the streaming
paths watch the client's `http.disconnect` while they work: a watcher task cancels the request's
own task when it comes (as Starlette's StreamingResponse does for ASGI < 2.4, but always). The
work runs in the request's task itself, with plain asyncio: a task group per request (two tasks,
cancel scopes) was a measurable part of a gateway's per-request cost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from json.encoder import encode_basestring
from typing import Any, Final, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# Placeholders in a body given to `event_format`: an integer, and a string (filled in as
# `json_text` encodes it).
INT: Final = "\x00int\x00"
TEXT: Final = "\x00text\x00"
_SPECS = {json.dumps(INT).encode(): b"%d", json.dumps(TEXT).encode(): b"%s"}


def one_line(body: dict[str, Any]) -> bytes:
    """Compact JSON on one line: the qianfan SDK parses only a body's first line."""
    return _COMPACT.encode(body).encode()


def event_format(body: dict[str, Any]) -> bytes:
    """The SSE event of `body` as a bytes format, its INT and TEXT placeholders in order: filled
    with `%`, it is byte for byte `data: one_line(filled body)` and a blank line. The events of
    a stream differ in a few values: they are made from a format, not a body rendered each time.
    """
    rendered = b"data: " + one_line(body).replace(b"%", b"%%") + b"\n\n"
    for placeholder, spec in _SPECS.items():
        rendered = rendered.replace(placeholder, spec)
    return rendered


def json_text(text: str) -> bytes:
    """`text` as `one_line` writes a string, to fill a TEXT placeholder."""
    return encode_basestring(text).encode()


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


class _DisconnectWatch:
    """Cancels the current task when the client disconnects; `gone` then says so.

    Use only after the request body has been read: every message left is then a disconnect.
    The cancellation can only land in an await of the watched task, never after it stopped
    watching: the watcher runs while that task is suspended, and `stop` is synchronous."""

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def ours(self) -> bool:
        """Whether a CancelledError being handled is the watcher's (then it is consumed)."""
        return self.gone and self._task is not None and self._task.uncancel() == 0

    def stop(self) -> None:
        self._watcher.cancel()


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then raise ClientGone).

    Call only after the request body has been read."""
    watch = _DisconnectWatch(receive)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.ours():
            raise ClientGone() from None
        raise
    finally:
        watch.stop()


class EventStreamResponse(Response):
    """Server-sent events from an async iterator of ready-framed chunks."""

    media_type = "text/event-stream;charset=utf-8"

    def __init__(
        self, chunks: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        # Not Response.__init__: that would declare a Content-Length for an empty body.
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = _DisconnectWatch(receive)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.ours():
                raise  # not the client leaving: shutdown, say
        finally:
            watch.stop()
            # A generator left suspended by the cancellation is not closed by it: close it here,
            # so its own cleanup (aborting the engine's sequence) runs now.
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
