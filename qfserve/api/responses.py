"""Disconnect-aware ASGI plumbing shared by the API dialects.

A client that goes away must stop its generation at once, so both the plain and the streaming
paths race their work against the client's `http.disconnect` in one task group: whichever ends
first cancels the other (as Starlette's StreamingResponse does for ASGI < 2.4, but always).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


def one_line(body: dict[str, Any]) -> bytes:
    """Compact JSON on one line: the qianfan SDK parses only a body's first line."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then raise ClientGone).

    Call only after the request body has been read: every message left is then a disconnect.
    """
    outcome: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def run() -> None:
            # The work's own error is re-raised as itself below, not wrapped in the task
            # group's ExceptionGroup: callers answer it by its type.
            try:
                outcome.append(await work)
            except Exception as exc:
                failure.append(exc)
            group.cancel_scope.cancel()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    if failure:
        raise failure[0]
    if not outcome:
        raise ClientGone()
    return outcome[0]


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
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                    )
                    async for chunk in self._chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            # A generator left suspended by the cancellation is not closed by it: close it here,
            # so its own cleanup (aborting the engine's sequence) runs now.
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
