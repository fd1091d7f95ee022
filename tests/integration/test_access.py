"""Apps and tokens managed from the CLI while a real server runs: deletion, disabling, endpoint
permissions, revocation, secret rotation, and the usage ledger's sums."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests

from tests.pg_server import running_postgres
from tests.servers import Server, qfserve, running_server
from tests.waiting import wait_until

pytestmark = pytest.mark.model


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server per store: the same tests against SQLite and a real PostgreSQL."""
    with ExitStack() as stack:
        env = {}
        if request.param == "postgres":
            env["QFSERVE_DATABASE_URL"] = stack.enter_context(running_postgres())
        yield stack.enter_context(running_server(tmp_path_factory.mktemp("access"), **env))


HI = {"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 3}


def chat(server: Server, token: str, endpoint: str = "llama_2_7b", **body: Any) -> dict[str, Any]:
    reply = requests.post(server.chat_url(token, endpoint), json={**HI, **body}, timeout=60)
    return dict(reply.json())


def cli(server: Server, *args: str) -> str:
    return qfserve(*args, env=server.env).stdout


def test_deleted_app_gets_15_and_cannot_fetch_tokens(server: Server) -> None:
    app = server.create_app("deleted")
    token = server.token(app)
    cli(server, "app", "delete", str(app["app_id"]))
    assert chat(server, token)["error_code"] == 15
    with pytest.raises(requests.HTTPError):
        server.token(app)
    assert str(app["app_id"]) not in [
        str(a["app_id"]) for a in json.loads(cli(server, "app", "list", "--json"))
    ]


def test_disable_and_enable(server: Server) -> None:
    app = server.create_app("toggled")
    token = server.token(app)
    cli(server, "app", "disable", str(app["app_id"]))
    assert chat(server, token)["error_code"] == 15
    cli(server, "app", "enable", str(app["app_id"]))
    assert "error_code" not in chat(server, token)


def test_endpoint_permission_is_6(server: Server) -> None:
    app = server.create_app("limited")
    token = server.token(app)
    shown = json.loads(
        cli(server, "app", "quota", str(app["app_id"]), "--endpoints", "other_model")
    )
    assert shown["endpoints"] == ["other_model"]
    assert chat(server, token)["error_code"] == 6
    cli(server, "app", "quota", str(app["app_id"]), "--endpoints", "")
    assert "error_code" not in chat(server, token)


def test_revoke_tokens_is_110(server: Server) -> None:
    app = server.create_app("revoked")
    first, second = server.token(app), server.token(app)
    assert "2 tokens revoked" in cli(server, "app", "revoke-tokens", str(app["app_id"]))
    assert chat(server, first)["error_code"] == 110
    assert chat(server, second)["error_code"] == 110
    assert "error_code" not in chat(server, server.token(app))


def test_rotate_secret(server: Server) -> None:
    app = server.create_app("rotated")
    old_token = server.token(app)
    rotated = json.loads(cli(server, "app", "rotate-secret", str(app["app_id"]), "--json"))
    with pytest.raises(requests.HTTPError):
        server.token(app)  # the old Secret Key
    assert chat(server, old_token)["error_code"] == 110
    new_token = server.token({**app, "secret_key": rotated["secret_key"]})
    assert "error_code" not in chat(server, new_token)


def test_usage_ledger_sums_equal_what_clients_were_told(server: Server) -> None:
    app = server.create_app("metered")
    token = server.token(app)
    told = [chat(server, token, user_id=f"user-{i % 2}")["usage"] for i in range(4)]
    chat(server, token, temperature=9)  # a refused request is a row too, with no tokens
    app_id = str(app["app_id"])

    def ledger_by_user() -> list[dict[str, Any]] | None:
        # All five requests, once they are in: the ledger is written off the request path.
        rows: list[dict[str, Any]] = json.loads(
            cli(server, "usage", "--app", app_id, "--by", "user", "--json")
        )
        return rows if sum(r["requests"] for r in rows) >= 5 else None

    rows = wait_until(ledger_by_user, interval=0.2, what="five requests in the usage ledger")
    by_user = {r["user"]: r for r in rows}
    assert by_user["user-0"]["requests"] == 2 and by_user["user-1"]["requests"] == 2
    assert sum(r["prompt_tokens"] for r in rows) == sum(u["prompt_tokens"] for u in told)
    assert sum(r["completion_tokens"] for r in rows) == sum(u["completion_tokens"] for u in told)
    assert sum(r["total_tokens"] for r in rows) == sum(u["total_tokens"] for u in told)
    by_day = json.loads(cli(server, "usage", "--app", str(app["app_id"]), "--json"))
    assert sum(r["requests"] for r in by_day) == 5
    table = cli(server, "usage", "--app", str(app["app_id"]), "--by", "endpoint")
    assert "llama_2_7b" in table


def test_no_secret_or_token_reaches_the_log_or_the_database(server: Server) -> None:
    """Runs last in this module: every key and token the tests above used, grepped for."""
    app = server.create_app("grepped")
    token = server.token(app)
    chat(server, token)
    chat(server, token, temperature=9)
    chat(server, token + "x")
    requests.post(server.chat_url(token), data=b"not json", timeout=10)
    secrets = [a["secret_key"] for a in server.apps] + server.tokens
    assert len(secrets) >= 2
    log = server.log()
    leaked = [s for s in secrets if s in log]
    assert not leaked, "secrets in the server log"
    database = server.data_dir / "qfserve.db"
    if database.exists():
        raw = database.read_bytes()
        assert not [s for s in secrets if s.encode() in raw], "secrets stored in clear"
