"""Where the admin surface is served: on a loopback chat port by default, never on a public one
unless asked, and on a socket of its own when it has a port (the chat port then answers 404)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from qfserve.config import AdminSettings, Settings
from qfserve.process import server_for
from tests.admin.console import API, admin_token
from tests.inprocess import InProcess, running
from tests.servers import free_port
from tests.waiting import wait_until


@pytest.mark.parametrize(
    ("host", "admin", "placement"),
    [
        ("127.0.0.1", AdminSettings(), "main"),
        ("::1", AdminSettings(), "main"),
        ("localhost", AdminSettings(), "main"),
        ("0.0.0.0", AdminSettings(), "off"),
        ("192.168.1.5", AdminSettings(), "off"),
        ("0.0.0.0", AdminSettings(on_public_port=True), "main"),
        ("0.0.0.0", AdminSettings(port=8001), "own"),
        ("127.0.0.1", AdminSettings(port=8001), "own"),
        ("127.0.0.1", AdminSettings(enabled=False), "off"),
        ("0.0.0.0", AdminSettings(enabled=False, port=8001), "off"),
    ],
)
def test_placement(host: str, admin: AdminSettings, placement: str) -> None:
    assert Settings(host=host, admin=admin).admin_placement == placement


def test_the_admin_port_must_differ_from_the_chat_port() -> None:
    with pytest.raises(ValidationError, match=r"admin\.port"):
        Settings(port=8000, admin=AdminSettings(port=8000))


def _me(client: TestClient, qf: InProcess, base: str = "") -> int:
    headers = {"Authorization": f"Bearer {admin_token(qf)}"}
    return client.get(f"{base}{API}/me", headers=headers).status_code


def _unknown_route(qf: InProcess) -> None:
    """The admin API is not there: its path is an unknown route like any other (Qianfan V1's
    error 3, the chat server's answer to unknown paths)."""
    headers = {"Authorization": f"Bearer {admin_token(qf)}"}
    reply = qf.client.get(f"{API}/me", headers=headers)
    assert reply.json()["error_code"] == 3


def test_a_public_chat_port_serves_no_admin_surface(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running(tmp_path, host="0.0.0.0") as qf:
        _unknown_route(qf)
        assert qf.client.get("/health").status_code == 200
    assert any("admin API and console are off" in r.getMessage() for r in caplog.records)


def test_turned_off_it_is_not_served(tmp_path: Path) -> None:
    with running(tmp_path, admin=AdminSettings(enabled=False)) as qf:
        _unknown_route(qf)


def test_with_a_port_of_its_own_only_that_port_serves_it(tmp_path: Path) -> None:
    with running(tmp_path, host="0.0.0.0", admin=AdminSettings(port=8001)) as qf:
        # The TestClient's requests arrive on port 80: the chat port here.
        assert _me(qf.client, qf) == 404
        assert qf.client.get("/console/").status_code == 404
        assert qf.client.get("/health").status_code == 200
        assert _me(qf.client, qf, "http://testserver:8001") == 200


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[InProcess, int, int]]:
    """The real server's sockets, the chat one public-looking and the admin one on loopback."""
    chat_port, admin_port = free_port(), free_port()
    with running(tmp_path) as qf:
        settings = Settings(
            data_dir=tmp_path,
            host="127.0.0.1",
            port=chat_port,
            admin=AdminSettings(port=admin_port),
            endpoints=qf.settings.endpoints,
        )
        from qfserve.server import create_app
        from tests.fake_engine import FakeEngine, fake_registry

        service = create_app(settings, engines=fake_registry(FakeEngine(), "llama_2_7b"))
        server, sockets = server_for(service, settings)
        assert sockets is not None and len(sockets) == 2
        thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started, what="the server listening")
            yield qf, chat_port, admin_port
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_two_real_sockets_tell_the_admin_surface_apart(
    listening: tuple[InProcess, int, int],
) -> None:
    qf, chat_port, admin_port = listening
    headers = {"Authorization": f"Bearer {admin_token(qf)}"}
    with httpx.Client() as client:
        chat = client.get(f"http://127.0.0.1:{chat_port}{API}/me", headers=headers)
        admin = client.get(f"http://127.0.0.1:{admin_port}{API}/me", headers=headers)
        health = client.get(f"http://127.0.0.1:{chat_port}/health")
        health_on_admin = client.get(f"http://127.0.0.1:{admin_port}/health")
    assert chat.status_code == 404
    assert admin.status_code == 200 and admin.json()["via"] == "token"
    assert health.status_code == health_on_admin.status_code == 200


def test_the_console_is_mounted_when_its_static_files_are_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qfserve.api.admin as admin_api

    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>console</title>")
    monkeypatch.setattr(admin_api, "CONSOLE_STATIC", static)
    with running(tmp_path / "data") as qf:
        page = qf.client.get("/console/")
        assert page.status_code == 200 and "<title>console</title>" in page.text
        moved = qf.client.get("/console", follow_redirects=False)
        assert moved.status_code in (302, 307) and moved.headers["location"].endswith("/console/")
