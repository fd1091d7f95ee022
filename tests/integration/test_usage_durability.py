"""Usage is billing data: every answer a client received whole has its ledger row, even when the
server is killed (SIGKILL, no shutdown) in the middle of a load of concurrent requests, streamed
and not, on the Qianfan and the OpenAI routes."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.servers import Server, running_server

pytestmark = [pytest.mark.slow, pytest.mark.model]

REQUESTS = 64
KILL_AFTER = REQUESTS // 3  # answers received whole before the kill


def _v1(server: Server, token: str, user: str, stream: bool) -> bool:
    """Whether the answer (or an error in its place) arrived whole."""
    body = {
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_output_tokens": 3,
        "user_id": user,
        "stream": stream,
    }
    with requests.post(server.chat_url(token), json=body, stream=stream, timeout=120) as reply:
        if not stream:
            return isinstance(reply.json(), dict)  # an answer or an error, read whole
        for line in reply.iter_lines():
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                if event.get("is_end") or "error_code" in event:
                    return True
    return False


def _openai(server: Server, token: str, user: str, stream: bool) -> bool:
    body = {
        "model": "llama_2_7b",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 3,
        "user": user,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{server.url}/v1/chat/completions"
    with requests.post(url, json=body, headers=headers, stream=stream, timeout=120) as reply:
        if not stream:
            return isinstance(reply.json(), dict)
        return any(line == b"data: [DONE]" for line in reply.iter_lines())


def test_every_answer_received_whole_is_in_the_ledger_after_a_kill(tmp_path: Path) -> None:
    received: list[str] = []  # users whose answer arrived whole
    lock = threading.Lock()
    with running_server(tmp_path / "qfserve") as server:
        token = server.token(server.create_app("billed"))

        def ask(n: int) -> None:
            user = f"user-{n}"
            route = _v1 if n % 2 else _openai
            try:
                whole = route(server, token, user, stream=n % 4 >= 2)
            except (requests.RequestException, ValueError):
                return  # cut off by the kill
            if whole:
                with lock:
                    received.append(user)

        with ThreadPoolExecutor(REQUESTS) as pool:
            for n in range(REQUESTS):
                pool.submit(ask, n)
            deadline = time.monotonic() + 240
            while len(received) < KILL_AFTER:
                assert time.monotonic() < deadline, "the load never got going"
                time.sleep(0.005)
            server.stop(signal.SIGKILL)
            with lock:
                whole = set(received)
        database = tmp_path / "qfserve" / "qfserve.db"
        with sqlite3.connect(database) as connection:
            rows = connection.execute("SELECT user_id FROM usage_records").fetchall()
    stored = {user for (user,) in rows}
    assert KILL_AFTER <= len(whole) < REQUESTS, "the kill did not come in the middle of the load"
    assert whole <= stored, f"answered but not billed: {sorted(whole - stored)}"
