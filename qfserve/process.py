"""The server process: uvicorn, the signals that stop it, and the drain before it exits."""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from qfserve.config import Settings
from qfserve.engines.registry import EngineRegistry


class Service:
    """The ASGI app and the hook a process manager calls when asked to stop."""

    def __init__(self, app: Starlette, engines: EngineRegistry, grace_seconds: float) -> None:
        self.app = app
        self._engines = engines
        self._grace = grace_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def begin_shutdown(self) -> None:
        """Thread- and signal-safe: stop taking requests and wind running ones down.

        Running answers get most of the grace period to finish; the rest end with error 2 as
        their last event before the server's own grace period cancels their connections.
        """
        if self._loop is not None and self._draining is None:
            self._loop.call_soon_threadsafe(self._start_draining)

    def _start_draining(self) -> None:
        if self._draining is None:
            # Leave the last second (or half, if shorter) for the error events to reach clients.
            running_time = max(self._grace / 2, self._grace - 1.0)
            self._draining = asyncio.ensure_future(self._engines.drain(running_time))


class _GracefulServer(uvicorn.Server):
    def __init__(self, service: Service, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._service.begin_shutdown()
        # uvicorn re-raises the signal once it has shut down, so the process dies by it (status
        # -15, or a KeyboardInterrupt traceback for SIGINT). A shutdown that was asked for and
        # completed gracefully is a clean exit: status 0.
        self._captured_signals.clear()


def run(service: Service, settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then wind down within the grace period and return."""
    config = uvicorn.Config(
        service.app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
        # Access logs would print every URL, and Qianfan URLs carry the access token.
        access_log=False,
    )
    _GracefulServer(service, config).run()
