"""Client connections on a real server: slow or silent clients are cut off, the open-files limit
is raised, and past the connection limit requests are answered 503."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.servers import Server, running_server

pytestmark = [pytest.mark.model, pytest.mark.slow]

READ_TIMEOUT = 2.0
SLACK = 3.0


@contextmanager
def soft_open_files_limit(soft: int) -> Iterator[None]:
    """The server inherits this soft limit (the usual default) from the test process."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def connect(server: Server, sent: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if sent:
        sock.sendall(sent)
    return sock


def closed_by_server(sockets: list[socket.socket], seconds: float) -> list[socket.socket]:
    """Wait until the server has closed every socket, or the deadline; the ones still open."""
    waiting = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        waiting.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while waiting.get_map() and time.monotonic() < deadline:
        for key, _ in waiting.select(timeout=0.2):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            sock = ready
            try:
                if sock.recv(65536):
                    continue  # a response before the close
            except ConnectionResetError:
                pass
            waiting.unregister(sock)
    still_open = [key.fileobj for key in waiting.get_map().values()]
    waiting.close()
    return [s for s in still_open if isinstance(s, socket.socket)]


def test_silent_and_half_sent_connections_are_cut_off_while_others_are_served(
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        with soft_open_files_limit(1024):
            server = stack.enter_context(
                running_server(
                    tmp_path, QFSERVE_HTTP__REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT)
                )
            )
        log = server.log()
        if resource.getrlimit(resource.RLIMIT_NOFILE)[1] > 1024:
            assert "open files limit raised from 1024 to" in log
        assert f"store: sqlite:///{tmp_path / 'qfserve.db'}" in log
        assert "quota counters: in this process (no redis_url)" in log

        chat = f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/llama_2_7b?access_token={'x' * 32}"
        idle = [connect(server) for _ in range(200)]
        partial_headers = [
            connect(server, b"GET /health HTTP/1.1\r\nHost: qfserve\r\nUser-Ag") for _ in range(100)
        ]
        partial_body = [
            connect(
                server,
                f"POST {chat} HTTP/1.1\r\nHost: qfserve\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b'{"messages": [',
            )
            for _ in range(80)
        ]
        # One request answered, then the next one only begun on the same connection.
        second_half_sent = [
            connect(server, b"GET /health HTTP/1.1\r\nHost: qfserve\r\n\r\nGET /hea")
            for _ in range(20)
        ]
        opened = time.monotonic()
        # Meanwhile the server answers everyone else.
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
        slow = [*idle, *partial_headers, *partial_body, *second_half_sent]
        still_open = closed_by_server(slow, READ_TIMEOUT + SLACK)
        took = time.monotonic() - opened
        assert not still_open, f"{len(still_open)} of {len(slow)} still open after {took:.1f} s"
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
        for sock in slow:
            sock.close()
        assert "Traceback" not in server.log()


def test_past_the_connection_limit_requests_are_answered_503(tmp_path: Path) -> None:
    with running_server(
        tmp_path,
        QFSERVE_HTTP__REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
        QFSERVE_HTTP__MAX_CONNECTIONS="20",
    ) as server:
        idle = [connect(server) for _ in range(30)]
        try:
            refused = requests.get(f"{server.url}/health", timeout=5)
            assert refused.status_code == 503
        finally:
            for sock in idle:
                sock.close()

        def served() -> bool:
            return requests.get(f"{server.url}/health", timeout=5).status_code == 200

        deadline = time.monotonic() + READ_TIMEOUT + SLACK
        while not served():
            assert time.monotonic() < deadline, "still refused after the idle ones left"
            time.sleep(0.1)
