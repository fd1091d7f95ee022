"""Secrets are shown once, where the contract says, and nowhere else: not in list responses, the
audit log, or any log line of the whole flow."""

from __future__ import annotations

import logging

import pytest

from qfserve.admin.credentials import Admins
from tests.admin.console import API, sign_in
from tests.inprocess import InProcess


def test_secrets_appear_once_and_never_in_lists_audit_or_logs(
    qf: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = sign_in(qf)
    secrets = [admin.password, admin.csrf_token, qf.client.cookies["qfserve_admin"]]
    made = admin.post("/apps", {"name": "secretive"}).json()
    app_id = made["app"]["app_id"]
    secrets.append(made["secret_key"])
    for kind in ("app_key", "v2_key", "iam_key"):
        secrets.append(admin.post(f"/apps/{app_id}/keys", {"kind": kind}).json()["secret"])
    secrets.append(admin.post(f"/apps/{app_id}/rotate-secret").json()["secret_key"])
    secrets.append(admin.post(f"/apps/{app_id}/playground-token").json()["token"])
    token = Admins(qf.store.database).create_token("ops").token
    secrets.append(token)
    qf.client.get(f"{API}/me", headers={"Authorization": f"Bearer {token}"})
    # Failed attempts with a secret-looking password must not log it either.
    qf.client.post(f"{API}/login", json={"name": "ops", "password": "hunter2-secret"})
    secrets.append("hunter2-secret")

    listings = [
        admin.get("/apps").text,
        admin.get(f"/apps/{app_id}").text,
        admin.get(f"/apps/{app_id}/keys").text,
        admin.get("/audit?limit=500").text,
        admin.get("/requests").text,
        admin.get("/me").text.replace(admin.csrf_token, ""),  # /me gives the CSRF token, by design
    ]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in secrets:
        assert len(secret) >= 8
        for listing in listings:
            assert secret not in listing
        assert secret not in logged
    assert len(secrets) == 11
