"""The server's life: client disconnects, restarts and shutdown, each on a real server."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.servers import Server, running_server
from tests.waiting import wait_until

pytestmark = [pytest.mark.model, pytest.mark.slow]

RAMBLE = {
    "messages": [{"role": "user", "content": "Write a very long story about a dragon, in detail."}],
    "temperature": 1.0,
    "max_output_tokens": 2048,
}


def cancelled_after(server: Server) -> list[int]:
    return [int(n) for n in re.findall(r"cancelled after (\d+) tokens", server.log())]


def test_stream_disconnect_stops_generation_and_next_request_is_answered(
    server: Server, token: str
) -> None:
    before = len(cancelled_after(server))
    with requests.post(
        server.chat_url(token), json={**RAMBLE, "stream": True}, stream=True, timeout=60
    ) as reply:
        first = next(reply.iter_lines())
        assert first.startswith(b"data: ")
    # The connection is closed: the engine must stop within a token, long before 2048.
    wait_until(lambda: len(cancelled_after(server)) > before, timeout=30, what="a cancellation")
    assert cancelled_after(server)[-1] < 1024
    answer = requests.post(
        server.chat_url(token),
        json={"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 4},
        timeout=60,
    ).json()
    assert answer["usage"]["completion_tokens"] >= 1


def test_plain_request_disconnect_stops_generation(server: Server, token: str) -> None:
    before = len(cancelled_after(server))
    with pytest.raises(requests.ReadTimeout):
        requests.post(server.chat_url(token), json=RAMBLE, timeout=(5, 1.5))
    wait_until(lambda: len(cancelled_after(server)) > before, timeout=30, what="a cancellation")
    assert "client went away before the answer" in server.log()
    answer = requests.post(
        server.chat_url(token),
        json={"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 4},
        timeout=60,
    ).json()
    assert answer["usage"]["completion_tokens"] >= 1


def test_token_survives_a_restart(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        app = server.create_app("restart")
        token = server.token(app)
        assert server.stop() == 0
        server.start()
        reply = requests.post(
            server.chat_url(token),
            json={"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 2},
            timeout=60,
        ).json()
        assert "error_code" not in reply, reply
        # Secrets and tokens are stored hashed only.
        raw = (tmp_path / "qfserve.db").read_bytes()
        assert token.encode() not in raw and app["secret_key"].encode() not in raw
        assert token not in server.log() and app["secret_key"] not in server.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_during_a_stream_exits_cleanly(tmp_path: Path, sig: int) -> None:
    with running_server(tmp_path, QFSERVE_SHUTDOWN_GRACE_SECONDS="2") as server:
        token = server.token(server.create_app("shutdown"))
        with requests.post(
            server.chat_url(token), json={**RAMBLE, "stream": True}, stream=True, timeout=60
        ) as reply:
            lines = reply.iter_lines()
            assert next(lines).startswith(b"data: ")
            assert server.process is not None
            server.process.send_signal(sig)
            # Within the grace period the stream ends: finished, or told the service is going
            # away (error 2) as its last event. Either way the body closes properly.
            events = [json.loads(line[6:]) for line in lines if line]
            last = events[-1]
            assert last.get("is_end") is True or last.get("error_code") == 2, last
        assert server.process.wait(timeout=60) == 0
        server.process = None
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", server.port)) != 0


def test_while_draining_health_answers_503_and_new_chats_error_2(tmp_path: Path) -> None:
    with running_server(tmp_path, QFSERVE_SHUTDOWN_GRACE_SECONDS="6") as server:
        token = server.token(server.create_app("drain"))
        assert server.process is not None
        with requests.post(
            server.chat_url(token), json={**RAMBLE, "stream": True}, stream=True, timeout=60
        ) as reply:
            lines = reply.iter_lines()
            assert next(lines).startswith(b"data: ")
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            # The load balancer's probe gets its answer at once: the node is going away.
            health = requests.get(f"{server.url}/health", timeout=2)
            answered = time.monotonic() - signalled
            assert health.status_code == 503 and health.json()["status"] == "draining"
            assert answered < 1.0, answered
            # A new question is refused the V1 way: error 2, HTTP 200, as the SDK retries it.
            refused = requests.post(
                server.chat_url(token),
                json={"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 4},
                timeout=5,
            )
            assert refused.status_code == 200
            body = refused.json()
            assert body["error_code"] == 2 and body["error_msg"] and body["id"], body
            # The running answer still ends properly within the grace period.
            events = [json.loads(line[6:]) for line in lines if line]
            last = events[-1]
            assert last.get("is_end") is True or last.get("error_code") == 2, last
        assert server.process.wait(timeout=60) == 0
        assert time.monotonic() - signalled < 6 + 3
        server.process = None
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", server.port)) != 0
