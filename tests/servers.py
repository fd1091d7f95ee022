"""Running a real qfserve server in a subprocess for the integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def qfserve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qfserve", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@dataclass
class Server:
    data_dir: Path
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    apps: list[dict[str, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # every token fetched, for the log checks

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat_url(self, token: str, endpoint: str = "llama_2_7b") -> str:
        return (
            f"{self.url}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}?access_token={token}"
        )

    def create_app(self, name: str = "test") -> dict[str, str]:
        created = json.loads(
            qfserve("app", "create", "--name", name, "--json", env=self.env).stdout
        )
        self.apps.append(created)
        return dict(created)

    def token(self, app: dict[str, str]) -> str:
        reply = requests.post(
            f"{self.url}/oauth/2.0/token",
            params={
                "grant_type": "client_credentials",
                "client_id": app["api_key"],
                "client_secret": app["secret_key"],
            },
            timeout=30,
        )
        reply.raise_for_status()
        token = str(reply.json()["access_token"])
        self.tokens.append(token)
        return token

    def start(self, *extra: str) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qfserve", "serve", "--port", str(self.port), *extra],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"qfserve exited: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("qfserve did not become healthy")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_server(data_dir: Path, *extra: str, **env_overrides: str) -> Iterator[Server]:
    env = {**os.environ, "QFSERVE_DATA_DIR": str(data_dir), "QFSERVE_ENGINE__N_THREADS": "2"}
    env.update(env_overrides)
    server = Server(data_dir, free_port(), env, data_dir / "server.log")
    data_dir.mkdir(parents=True, exist_ok=True)
    server.start(*extra)
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()
