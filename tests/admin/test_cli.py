"""`qfserve admin ...` against the store, as an operator runs it, and the app commands' entries
in the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qfserve.admin.audit import AuditLog
from qfserve.admin.credentials import Admins
from qfserve.cli import cli
from qfserve.store.database import Database


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QFSERVE_DATA_DIR", str(tmp_path))
    return tmp_path


def _run(*args: str, code: int = 0) -> str:
    done = CliRunner().invoke(cli, list(args))
    assert done.exit_code == code, done.output
    return done.output


def _database(data_dir: Path) -> Database:
    return Database(f"sqlite:///{data_dir / 'qfserve.db'}")


def test_admin_create_list_tokens_and_delete(data_dir: Path) -> None:
    created = json.loads(_run("admin", "create", "ops", "--json"))
    assert created["name"] == "ops" and len(created["password"]) == 24
    database = _database(data_dir)
    admins = Admins(database)
    assert admins.authenticate("ops", created["password"]) is not None

    again = _run("admin", "create", "ops", code=1)
    assert "exists" in again
    reset = json.loads(_run("admin", "create", "ops", "--reset", "--json"))
    assert admins.authenticate("ops", created["password"]) is None
    assert admins.authenticate("ops", reset["password"]) is not None
    assert "1 to 64" in _run("admin", "create", "bad name", code=1)

    token = json.loads(_run("admin", "token", "create", "ops", "--json"))
    assert token["name"] == "ops" and token["token"].startswith(token["prefix"])
    assert admins.verify_token(token["token"]) is not None
    listed = json.loads(_run("admin", "list", "--json"))
    assert [a["name"] for a in listed] == ["ops"]
    assert [t["prefix"] for t in listed[0]["tokens"]] == [token["prefix"]]
    table = _run("admin", "list")
    tokens = _run("admin", "token", "list", "ops")
    for shown in (json.dumps(listed), table, tokens):
        assert token["token"] not in shown and reset["password"] not in shown

    assert "revoked" in _run("admin", "token", "revoke", token["prefix"])
    assert admins.verify_token(token["token"]) is None
    _run("admin", "token", "revoke", token["prefix"], code=1)
    _run("admin", "delete", "ops")
    assert admins.all() == []
    _run("admin", "delete", "ops", code=1)
    _run("admin", "token", "create", "ops", code=1)

    actions = [row.action for row in AuditLog(database).search().rows]
    assert actions == [
        "admin.delete",
        "admin.token.revoke",
        "admin.token.create",
        "admin.reset",
        "admin.create",
    ]
    assert all(row.admin.startswith("cli:") for row in AuditLog(database).search().rows)
    database.close()


def test_app_commands_are_audited(data_dir: Path) -> None:
    app = json.loads(_run("app", "create", "--name", "shop", "--json"))
    _run("app", "quota", str(app["app_id"]), "--rpm", "5")
    key = json.loads(_run("app", "key", "create", str(app["app_id"]), "--json"))
    _run("app", "key", "revoke", key["prefix"])
    _run("app", "disable", str(app["app_id"]))
    database = _database(data_dir)
    rows = AuditLog(database).search().rows
    assert [(r.action, r.target) for r in rows] == [
        ("app.disable", f"app:{app['app_id']}"),
        ("key.revoke", f"app_key:{key['prefix']}"),
        ("key.create", f"app:{app['app_id']}"),
        ("app.access", f"app:{app['app_id']}"),
        ("app.create", f"app:{app['app_id']}"),
    ]
    assert rows[3].detail == {"rpm": 5}
    everything = json.dumps([r.detail for r in rows])
    assert app["secret_key"] not in everything and key["key"] not in everything
    database.close()
