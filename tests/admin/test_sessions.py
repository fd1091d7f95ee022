"""Signing in and out of the admin API: the cookie's attributes, the CSRF token, failed logins
limited per name and per address, sessions that end when idle or old, and bearer tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from qfserve.admin.credentials import Admins
from qfserve.admin.sessions import Sessions, csrf_matches
from qfserve.admin.times import aware
from qfserve.config import AdminSettings
from qfserve.store.database import Database
from qfserve.store.schema import AdminSessionRow
from tests.admin.console import API, admin_token, make_admin, sign_in
from tests.inprocess import InProcess, running


def test_login_sets_a_strict_http_only_cookie_and_gives_the_csrf_token(qf: InProcess) -> None:
    password = make_admin(qf)
    reply = qf.client.post(f"{API}/login", json={"name": "ops", "password": password})
    assert reply.status_code == 200
    body = reply.json()
    assert body["name"] == "ops" and body["idle_timeout_seconds"] == 1800
    cookie = reply.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert "secure" not in attributes  # plain HTTP here; set when the request came over HTTPS
    me = qf.client.get(f"{API}/me").json()
    assert me == {
        "name": "ops",
        "via": "session",
        "csrf_token": body["csrf_token"],
        "idle_timeout_seconds": 1800,
    }


def test_wrong_and_unknown_logins_answer_alike_and_are_audited(qf: InProcess) -> None:
    make_admin(qf)
    wrong = qf.client.post(f"{API}/login", json={"name": "ops", "password": "nope"})
    unknown = qf.client.post(f"{API}/login", json={"name": "nobody", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers
    admin = sign_in(qf)
    actions = [row["action"] for row in admin.get("/audit").json()["rows"]]
    assert actions[:3] == ["login", "login.failed", "login.failed"]


def test_failed_logins_are_limited_per_name_then_refused_unchecked(tmp_path: Path) -> None:
    with running(tmp_path, admin=AdminSettings(max_login_failures_per_name=3)) as qf:
        password = make_admin(qf)
        for _ in range(3):
            reply = qf.client.post(f"{API}/login", json={"name": "ops", "password": "guess"})
            assert reply.status_code == 401
        refused = qf.client.post(f"{API}/login", json={"name": "ops", "password": password})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 300
        # Another name from the same address is still let in.
        other = make_admin(qf, "other")
        ok = qf.client.post(f"{API}/login", json={"name": "other", "password": other})
        assert ok.status_code == 200


def test_failed_logins_are_limited_per_address(tmp_path: Path) -> None:
    limits = AdminSettings(max_login_failures_per_address=4, max_login_failures_per_name=100)
    with running(tmp_path, admin=limits) as qf:
        password = make_admin(qf)
        for n in range(4):
            qf.client.post(f"{API}/login", json={"name": f"guess{n}", "password": "x"})
        refused = qf.client.post(f"{API}/login", json={"name": "ops", "password": password})
        assert refused.status_code == 429


def test_logout_ends_the_session_and_clears_the_cookie(qf: InProcess) -> None:
    admin = sign_in(qf)
    cookie = qf.client.cookies["qfserve_admin"]
    reply = admin.post("/logout")
    assert reply.status_code == 204
    assert "max-age=0" in reply.headers["set-cookie"].lower()
    assert qf.client.get(f"{API}/me").status_code == 401
    # The old cookie, replayed, is refused: the session is gone from the store.
    qf.client.cookies.set("qfserve_admin", cookie)
    assert qf.client.get(f"{API}/me").status_code == 401


def test_an_idle_session_ends(qf: InProcess) -> None:
    sign_in(qf)
    assert qf.client.get(f"{API}/me").status_code == 200
    # As if the last request had been 31 minutes ago.
    with qf.store.database.session() as session:
        session.execute(
            update(AdminSessionRow).values(last_seen_at=datetime.now(UTC) - timedelta(minutes=31))
        )
    reply = qf.client.get(f"{API}/me")
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "unauthorized"


def test_a_pages_background_refresh_does_not_keep_a_session_alive(qf: InProcess) -> None:
    """A console left open polls the API; only what the admin does restarts the idle clock."""
    sign_in(qf)
    long_ago = datetime.now(UTC) - timedelta(minutes=20)
    with qf.store.database.session() as session:
        session.execute(update(AdminSessionRow).values(last_seen_at=long_ago))
    background = {"X-Admin-Background": "1"}
    assert qf.client.get(f"{API}/me", headers=background).status_code == 200
    with qf.store.database.session() as session:
        (seen,) = session.execute(select(AdminSessionRow.last_seen_at)).scalars()
    assert aware(seen) == long_ago
    assert qf.client.get(f"{API}/me").status_code == 200
    with qf.store.database.session() as session:
        (seen,) = session.execute(select(AdminSessionRow.last_seen_at)).scalars()
    assert aware(seen) > long_ago


def test_sessions_end_idle_or_old_and_are_kept_alive_by_use(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 's.db'}")
    database.upgrade()
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    sessions = Sessions(
        database, idle_seconds=600, max_seconds=3600, touch_seconds=60, clock=lambda: now[0]
    )
    admins = Admins(database)
    admins.create("ops")
    admin = admins.authenticate("ops", "wrong")
    assert admin is None
    (info,) = admins.all()
    from qfserve.admin.credentials import Admin

    opened = sessions.open(Admin(1, info.name))
    assert csrf_matches(opened.secret, opened.csrf_token)
    assert not csrf_matches(opened.secret, "0" * 64) and not csrf_matches(opened.secret, None)
    assert not csrf_matches(opened.secret, "é" * 64)
    # Used every 9 minutes, it lives on past the idle timeout ...
    for _ in range(6):
        now[0] += timedelta(minutes=9)
        assert sessions.resolve(opened.secret) is not None
    # ... but not past its maximum age.
    now[0] += timedelta(minutes=9)  # 63 minutes after it began
    assert sessions.resolve(opened.secret) is None
    idle = sessions.open(Admin(1, "ops"))
    now[0] += timedelta(minutes=10)
    assert sessions.resolve(idle.secret) is None
    assert sessions.resolve("") is None
    database.close()


def test_a_new_password_ends_the_admins_sessions(qf: InProcess) -> None:
    sign_in(qf)
    make_admin(qf)  # `qfserve admin create ops --reset`
    assert qf.client.get(f"{API}/me").status_code == 401


def test_bearer_tokens_work_until_revoked(qf: InProcess) -> None:
    token = admin_token(qf)
    headers = {"Authorization": f"Bearer {token}"}
    me = qf.client.get(f"{API}/me", headers=headers).json()
    assert me == {
        "name": "script",
        "via": "token",
        "csrf_token": None,
        "idle_timeout_seconds": None,
    }
    assert qf.client.post(f"{API}/logout", headers=headers).status_code == 204
    Admins(qf.store.database).revoke_token(token[:12])
    assert qf.client.get(f"{API}/me", headers=headers).status_code == 401


def test_bodies_must_be_json(qf: InProcess) -> None:
    admin = sign_in(qf)
    form = qf.client.post(
        f"{API}/apps",
        content="name=x",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-CSRF-Token": admin.csrf_token,
        },
    )
    assert form.status_code == 415
    broken = qf.client.post(
        f"{API}/apps",
        content="{",
        headers={"Content-Type": "application/json", "X-CSRF-Token": admin.csrf_token},
    )
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "bad_request")
    huge = admin.post("/apps", {"name": "x" * 70_000})
    assert huge.status_code == 413
    login_form = qf.client.post(
        f"{API}/login",
        content="name=ops&password=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert login_form.status_code == 415


def test_odd_input_is_a_client_error_never_a_crash(qf: InProcess) -> None:
    admin = sign_in(qf)
    raw = {"Content-Type": "application/json", "X-CSRF-Token": admin.csrf_token}
    for body in (
        '{"name": "\\ud800"}',
        '{"name": "a\\u0000b"}',
        "[]",
        '{"name": 5}',
        '{"name": "x", "extra": 1}',
    ):
        reply = qf.client.post(f"{API}/apps", content=body, headers=raw)
        assert reply.status_code == 400, (body, reply.text)
    for body in ('{"name": "\\ud800", "password": "\\ud800"}', '{"name": "ops"}'):
        login = qf.client.post(
            f"{API}/login", content=body, headers={"Content-Type": "application/json"}
        )
        assert login.status_code == 400, (body, login.text)
