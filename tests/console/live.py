"""qfserve on a `FakeEngine`, served by a real uvicorn on a loopback port in a thread of the test
process, for a real browser to talk to: the real app (admin API, console, chat routes, quotas,
usage ledger on SQLite), no model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from qfserve.config import EndpointSettings, Settings
from qfserve.server import create_app
from tests.fake_engine import FakeEngine, fake_registry
from tests.servers import free_port
from tests.waiting import wait_until


@dataclass(frozen=True, slots=True)
class LiveServer:
    url: str
    data_dir: Path
    engine: FakeEngine
    settings: Settings

    def cli(self, *args: str) -> str:
        """`qfserve ...` on this server's database, as an operator runs it beside the server."""
        done = subprocess.run(
            [sys.executable, "-m", "qfserve", *args],
            env={**os.environ, "QFSERVE_DATA_DIR": str(self.data_dir)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def create_admin(self, name: str) -> str:
        """A new admin's password, from `qfserve admin create NAME --json`."""
        made: dict[str, Any] = json.loads(self.cli("admin", "create", name, "--json"))
        assert made["name"] == name
        return str(made["password"])


@contextmanager
def live_server(
    data_dir: Path, engine: FakeEngine, endpoints: tuple[str, ...], **settings: Any
) -> Iterator[LiveServer]:
    config = Settings(
        data_dir=data_dir,
        endpoints=[EndpointSettings(name=name) for name in endpoints],
        **settings,
    )
    service = create_app(config, engines=fake_registry(engine, *endpoints))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            service.app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name="console-test-server", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=60, what="server start")
    assert thread.is_alive(), "the server did not start"
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", data_dir, engine, config)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
