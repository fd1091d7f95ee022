"""The server process: uvicorn, its connections, the signals that stop it, and the drain before it
exits."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Callable
from types import FrameType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from qfserve.config import Settings
from qfserve.engines.registry import EngineRegistry

log = logging.getLogger(__name__)

# The soft open-files limit is raised to the hard one, but no further than this: enough for the
# connection limits anyone sets, without asking the kernel for a million descriptors.
OPEN_FILES_CAP = 65536
# Descriptors kept for everything but client connections: the model, the store's and Redis's
# connections, logs, the safety lists (upstream connections of remote endpoints come on top).
OTHER_FILES = 256


class Service:
    """The ASGI app and the hook a process manager calls when asked to stop."""

    def __init__(self, app: Starlette, engines: EngineRegistry, grace_seconds: float) -> None:
        self.app = app
        self._engines = engines
        self._grace = grace_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        """Asked to stop: running answers are winding down, and no new ones are taken."""
        return self._draining is not None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def begin_shutdown(self, then: Callable[[], None] = lambda: None) -> bool:
        """Thread- and signal-safe: stop taking requests and wind running ones down, then call
        `then` on the event loop. False if the app is not serving yet (nothing to drain).

        Running answers get most of the grace period to finish; the rest end with error 2 as
        their last event before the server's own grace period cancels their connections.
        """
        if self._loop is None:
            return False
        self._loop.call_soon_threadsafe(self._start_draining, then)
        return True

    def _start_draining(self, then: Callable[[], None]) -> None:
        if self._draining is None:
            log.info("draining: /health answers 503, new answers are refused")
            # Leave the last second (or half, if shorter) for the error events to reach clients.
            running_time = max(self._grace / 2, self._grace - 1.0)
            self._draining = asyncio.ensure_future(self._engines.drain(running_time))
            self._draining.add_done_callback(lambda done: self._drained(done, then))

    @staticmethod
    def _drained(done: asyncio.Task[None], then: Callable[[], None]) -> None:
        if not done.cancelled() and (failure := done.exception()) is not None:
            log.error("draining the engines failed: %r", failure, exc_info=failure)
        then()


class _GracefulServer(uvicorn.Server):
    """uvicorn, but a stop signal first drains the service while the server keeps listening, so
    load balancers see /health answer 503 rather than a refused connection; only then does uvicorn
    stop listening and wait for the last responses. A second signal stops listening at once."""

    def __init__(self, service: Service, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._service = service
        self._stop_asked: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stop_asked is not None or not self._service.begin_shutdown(self._drained):
            super().handle_exit(sig, frame)
        else:
            self._stop_asked = time.monotonic()
        # uvicorn re-raises the signal once it has shut down, so the process dies by it (status
        # -15, or a KeyboardInterrupt traceback for SIGINT). A shutdown that was asked for and
        # completed gracefully is a clean exit: status 0.
        self._captured_signals.clear()

    def _drained(self) -> None:
        # uvicorn's own wait for the last responses gets what is left of the grace period.
        spent = time.monotonic() - (self._stop_asked or time.monotonic())
        grace = self.config.timeout_graceful_shutdown or 0
        self.config.timeout_graceful_shutdown = max(1, round(grace - spent))
        self.should_exit = True


def http_protocol(read_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request does not arrive whole
    (headers and body) within `read_timeout` seconds of the connection opening or the request's
    first byte. uvicorn times out only idle keep-alive connections: a client that connects and
    sends nothing, or half a request, would hold its connection and descriptor forever."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        _read_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_reading()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._read_deadline is None:
                self._start_reading()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._stop_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_reading()
            super().connection_lost(exc)

        def _start_reading(self) -> None:
            self._read_deadline = self.loop.call_later(read_timeout, self._read_timed_out)

        def _stop_reading(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _read_timed_out(self) -> None:
            self._read_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedHttpToolsProtocol


def raise_open_files_limit(cap: int = OPEN_FILES_CAP) -> int:
    """Raise the soft limit on open files to the hard one (at most `cap`): every connection
    holds a descriptor, and the usual soft default of 1024 runs out first. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files limit stays at %d: %s", soft, exc)
            return soft
        log.info("open files limit raised from %d to %d", soft, wanted)
        return wanted
    return cap if soft == resource.RLIM_INFINITY else soft


def connection_limit(settings: Settings, open_files: int) -> int:
    """`http.max_connections`, lowered to what the open-files limit leaves for clients."""
    upstream = sum(e.max_connections for e in settings.endpoints if e.engine == "remote")
    fits = max(1, open_files - OTHER_FILES - upstream)
    wanted = settings.http.max_connections
    if wanted > fits:
        log.warning(
            "http.max_connections lowered from %d to %d: the open files limit is %d",
            wanted,
            fits,
            open_files,
        )
        return fits
    return wanted


def masked_url(url: str) -> str:
    """A database or Redis URL fit for the log: the password (in the URL or its query) hidden."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = [name for name, _ in query if name.lower() in ("password", "passwd")]
    if parts.password is None and not secret_query:
        return url  # as given: rebuilding would lose the empty host of `sqlite:////path`
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    shown = [(name, "***" if name in secret_query else value) for name, value in query]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(shown, safe="*/:")))


def log_backends(settings: Settings) -> None:
    """Say where the store and the quota counters live, before connecting to either."""
    log.info("store: %s", masked_url(settings.resolved_database_url))
    if settings.redis_url:
        log.info("quota counters: Redis at %s", masked_url(settings.redis_url))
    else:
        log.info("quota counters: in this process (no redis_url)")


def run(service: Service, settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then wind down within the grace period and return."""
    server, sockets = server_for(service, settings)
    server.run(sockets=sockets)


def server_for(
    service: Service, settings: Settings
) -> tuple[uvicorn.Server, list[socket.socket] | None]:
    """The server, and the sockets it listens on when the admin surface has a port of its own
    (None: uvicorn binds the chat host and port itself)."""
    config = uvicorn.Config(
        service.app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=http_protocol(settings.http.request_read_timeout_seconds),
        # Past the limit uvicorn answers 503 instead of running the request.
        limit_concurrency=connection_limit(settings, raise_open_files_limit()),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
        # Access logs would print every URL, and Qianfan URLs carry the access token.
        access_log=False,
    )
    server = _GracefulServer(service, config)
    if settings.admin_placement != "own":
        return server, None
    # One server, two listening sockets: the app tells them apart by the local port.
    admin = uvicorn.Config(service.app, host=settings.admin.host, port=settings.admin.port)
    log.info("admin API and console on %s:%d", settings.admin.host, settings.admin.port)
    return server, [config.bind_socket(), admin.bind_socket()]
