"""An admin of the in-process server (`tests/inprocess.py`): created as `qfserve admin create`
does, signed in over the API like the console, or holding a bearer token like a script."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qfserve.admin.credentials import Admins
from tests.inprocess import InProcess, Response

API = "/admin/api"


@dataclass
class SignedIn:
    qf: InProcess
    name: str
    password: str
    csrf_token: str

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.qf.client.get(API + path, **kwargs)

    def send(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
        """A changing request, with the session's CSRF token."""
        headers = {"X-CSRF-Token": self.csrf_token, **kwargs.pop("headers", {})}
        return self.qf.client.request(method, API + path, json=body, headers=headers, **kwargs)

    def post(self, path: str, body: Any = None) -> Response:
        return self.send("POST", path, body)


def make_admin(qf: InProcess, name: str = "ops") -> str:
    """The admin's new password (an existing admin gets a new one)."""
    return Admins(qf.store.database).create(name, reset=True)


def sign_in(qf: InProcess, name: str = "ops") -> SignedIn:
    password = make_admin(qf, name)
    reply = qf.client.post(f"{API}/login", json={"name": name, "password": password})
    assert reply.status_code == 200, reply.text
    return SignedIn(qf, name, password, reply.json()["csrf_token"])


def admin_token(qf: InProcess, name: str = "script") -> str:
    admins = Admins(qf.store.database)
    if not admins.exists(name):
        admins.create(name)
    return admins.create_token(name).token
