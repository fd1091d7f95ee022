"""`GET /v1/BCE-BEARER/token` in process, signed as the qianfan SDK signs it (baidubce's signer,
the headers and query `IAM.create_bearer_token` sends)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from baidubce.auth.bce_credentials import BceCredentials
from baidubce.auth.bce_v1_signer import sign
from baidubce.utils import get_canonical_time
from starlette.applications import Starlette
from starlette.testclient import TestClient

from qfserve.access.app_keys import AppKeys
from qfserve.access.apps import AppRegistry
from qfserve.access.bearer_tokens import MAX_LIFETIME_SECONDS, BearerTokens
from qfserve.access.gate import AccessGate
from qfserve.access.iam_keys import IamKeys
from qfserve.access.quota import QuotaEnforcer, QuotaLimits
from qfserve.access.tokens import TokenIssuer
from qfserve.access.usage import UsageLedger
from qfserve.access.v2_keys import V2Keys
from qfserve.api import errors as api_errors
from qfserve.api.qianfan_v2 import bearer
from qfserve.engines.registry import EngineRegistry
from qfserve.metrics import Metrics
from qfserve.store.database import Database

HOST = "testserver"  # what the test client sends, as the SDK sends its IAM base URL's host


@dataclass
class Setup:
    client: TestClient
    apps: AppRegistry
    v2_keys: V2Keys
    app_id: int
    access_key: str
    secret_key: str


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.upgrade()
    apps, iam_keys, v2_keys = AppRegistry(database), IamKeys(database, b"1" * 64), V2Keys(database)
    app_id = apps.create("a").app.app_id
    key = iam_keys.create(app_id)
    gate = AccessGate(
        TokenIssuer(database, 3600),
        iam_keys,
        AppKeys(database),
        UsageLedger(database),
        Metrics(EngineRegistry({})),
        QuotaEnforcer(),
        QuotaLimits.from_config(),
        v2_keys=v2_keys,
        inline_lookups=True,
    )
    app = Starlette(
        routes=bearer.build_routes(gate, BearerTokens(database)),
        exception_handlers=api_errors.HANDLERS,
    )
    with TestClient(app) as client:
        yield Setup(client, apps, v2_keys, app_id, key.access_key, key.secret_key)
    database.close()


def signed_headers(
    access_key: str, secret_key: str, query: dict[str, str], path: str = bearer.PATH
) -> dict[str, str]:
    stamp = time.time()
    headers = {
        "Content-Type": "application/json",
        "Host": HOST,
        "request-source": "qianfan_py_sdk_v0.4.12.3",
        "x-bce-date": get_canonical_time(stamp).decode(),
    }
    headers["Authorization"] = sign(
        BceCredentials(access_key, secret_key),
        b"GET",
        path.encode(),
        {k.encode(): v for k, v in headers.items()},
        {k.encode(): v for k, v in query.items()},
        timestamp=stamp,
        expiration_in_seconds=300,
        headers_to_sign={k.lower().encode() for k in headers},
    ).decode()
    return headers


def fetch(
    setup: Setup, query: dict[str, str], secret_key: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = signed_headers(setup.access_key, secret_key or setup.secret_key, query)
    reply = setup.client.get(bearer.PATH, params=query, headers=headers)
    return reply.status_code, reply.json()


def seconds(iso: str) -> float:
    assert iso.endswith("Z")
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_mints_a_token_the_gate_accepts(setup: Setup) -> None:
    before = time.time()
    status, body = fetch(setup, {"expireInSeconds": "43200"})
    assert status == 201
    assert set(body) == {"userId", "token", "status", "createTime", "expireTime"}
    assert body["status"] == "enable" and body["userId"] == str(setup.app_id)
    assert int(before) <= seconds(body["createTime"]) <= time.time()
    assert seconds(body["expireTime"]) - seconds(body["createTime"]) == 43200
    assert setup.v2_keys.verify(body["token"]).app_id == setup.app_id
    assert setup.v2_keys.for_app(setup.app_id) == []  # a token, not an API key


@pytest.mark.parametrize(
    ("asked", "lifetime"),
    [(None, 86400), ("0", 1), ("-3", 1), (str(10**12), MAX_LIFETIME_SECONDS)],
)
def test_lifetime_default_and_bounds(setup: Setup, asked: str | None, lifetime: int) -> None:
    status, body = fetch(setup, {} if asked is None else {"expireInSeconds": asked})
    assert status == 201
    assert seconds(body["expireTime"]) - seconds(body["createTime"]) == lifetime


def assert_v2_error(status: int, body: dict[str, Any], want_status: int, code: str) -> None:
    assert (status, body["error"]["code"]) == (want_status, code)
    assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    assert body["id"].startswith("as-")


def test_a_wrong_secret_key_is_401(setup: Setup) -> None:
    assert_v2_error(*fetch(setup, {"expireInSeconds": "60"}, "0" * 32), 401, "invalid_iam_token")


def test_an_unsigned_request_is_401(setup: Setup) -> None:
    reply = setup.client.get(bearer.PATH, params={"expireInSeconds": "60"})
    assert_v2_error(reply.status_code, reply.json(), 401, "invalid_iam_token")
    v2_key = setup.v2_keys.create(setup.app_id).api_key
    reply = setup.client.get(bearer.PATH, headers={"Authorization": f"Bearer {v2_key}"})
    assert_v2_error(reply.status_code, reply.json(), 401, "invalid_iam_token")


def test_a_query_not_signed_is_401(setup: Setup) -> None:
    headers = signed_headers(setup.access_key, setup.secret_key, {"expireInSeconds": "60"})
    reply = setup.client.get(bearer.PATH, params={"expireInSeconds": "999"}, headers=headers)
    assert_v2_error(reply.status_code, reply.json(), 401, "invalid_iam_token")


def test_a_lifetime_not_a_number_is_400(setup: Setup) -> None:
    assert_v2_error(*fetch(setup, {"expireInSeconds": "12h"}), 400, "invalid_argument")


def test_a_disabled_app_gets_no_token(setup: Setup) -> None:
    setup.apps.set_disabled(setup.app_id, True)
    assert_v2_error(*fetch(setup, {"expireInSeconds": "60"}), 401, "invalid_iam_token")
