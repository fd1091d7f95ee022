"""The server process's own pieces: connection deadlines, the open-files limit, log-safe URLs."""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from qfserve.config import EndpointSettings, HttpSettings, Settings
from qfserve.process import (
    connection_limit,
    http_protocol,
    log_backends,
    masked_url,
    raise_open_files_limit,
)
from tests.servers import free_port


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://qfserve:s3cr%40t@db.internal:5432/qfserve",
            "postgresql+psycopg://qfserve:***@db.internal:5432/qfserve",
        ),
        ("redis://:hunter2@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        (
            "rediss://default:pw@r:6380/1?ssl_cert_reqs=none",
            "rediss://default:***@r:6380/1?ssl_cert_reqs=none",
        ),
        ("redis://r:6379/0?password=pw&db=2", "redis://r:6379/0?password=***&db=2"),
        ("sqlite:////var/lib/qfserve/qfserve.db", "sqlite:////var/lib/qfserve/qfserve.db"),
        ("postgresql://qfserve@db/qfserve", "postgresql://qfserve@db/qfserve"),
    ],
)
def test_masked_url_hides_passwords_only(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@contextmanager
def soft_limit(soft: int) -> Iterator[int]:
    old, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old, hard))


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "qfserve.process")
    with soft_limit(256) as hard:
        if hard <= 256:
            pytest.skip("the hard limit leaves nothing to raise")
        wanted = min(hard, 4096)
        assert raise_open_files_limit(cap=4096) == wanted
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
        assert raise_open_files_limit(cap=4096) == wanted
    assert [r.getMessage() for r in caplog.records] == [
        f"open files limit raised from 256 to {wanted}"
    ]


def test_the_connection_limit_leaves_room_for_everything_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(http=HttpSettings(max_connections=2048))
    assert connection_limit(settings, 20000) == 2048
    remote = EndpointSettings(
        name="remote", engine="remote", upstreams=["http://u:1"], max_connections=256
    )
    settings = Settings(endpoints=[remote], http=HttpSettings(max_connections=2048))
    assert connection_limit(settings, 1024) == 1024 - 256 - 256
    assert "lowered from 2048 to 512" in caplog.text


@contextmanager
def serving(read_timeout: float) -> Iterator[int]:
    """A bare Starlette app behind uvicorn with the timed protocol, on a thread."""

    async def hello(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def echo(request: Request) -> PlainTextResponse:
        try:
            return PlainTextResponse(await request.body())
        except ClientDisconnect:
            return PlainTextResponse("gone", status_code=400)

    app = Starlette(routes=[Route("/", hello), Route("/echo", echo, methods=["POST"])])
    port = free_port()
    config = uvicorn.Config(
        app, port=port, http=http_protocol(read_timeout), log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True once the server closed the connection (any response before that is read past)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def response(sock: socket.socket, ending: bytes) -> bytes:
    sock.settimeout(5)
    received = b""
    while not received.endswith(ending):
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def test_connections_whose_request_does_not_arrive_in_time_are_closed() -> None:
    with serving(read_timeout=0.5) as port:
        sent = [
            b"",  # connects and says nothing
            b"GET / HTTP/1.1\r\nHost: t\r\nUser-Ag",  # half the headers
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc",  # half the body
            GET + b"GET / HTT",  # one request answered, the next only begun
        ]
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in sent]
        for sock, data in zip(sockets, sent, strict=True):
            sock.sendall(data)
        started = time.monotonic()
        # Everyone else is served meanwhile, on a connection kept alive across requests.
        with socket.create_connection(("127.0.0.1", port)) as prompt:
            for _ in range(2):
                prompt.sendall(GET)
                assert response(prompt, b"hello").startswith(b"HTTP/1.1 200")
        assert all(closed_within(sock, 3.0) for sock in sockets)
        assert time.monotonic() - started < 3.0
        for sock in sockets:
            sock.close()


def test_a_request_sent_slowly_but_in_time_is_answered() -> None:
    with serving(read_timeout=1.0) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
        time.sleep(0.3)  # the client's pause is what is tested, not a synchronisation
        sock.sendall(b"cd")
        assert response(sock, b"abcd").startswith(b"HTTP/1.1 200")
        # The answered connection is not cut off by the request's deadline afterwards: only
        # uvicorn's keep-alive timeout (5 s) closes it.
        assert not closed_within(sock, 1.5)


def test_start_up_says_where_the_store_and_the_counters_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "qfserve.process")
    log_backends(
        Settings(
            database_url="postgresql+psycopg://qfserve:pg-secret@db.internal/qfserve",
            redis_url="redis://:redis-secret@redis.internal:6379/0",
        )
    )
    assert [r.getMessage() for r in caplog.records] == [
        "store: postgresql+psycopg://qfserve:***@db.internal/qfserve",
        "quota counters: Redis at redis://:***@redis.internal:6379/0",
    ]
