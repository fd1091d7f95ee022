"""V2 credentials on a real server: API keys made, listed and revoked with the CLI, and bearer
tokens fetched by the unmodified qianfan SDK from `/v1/BCE-BEARER/token` with an app's IAM keys.
Both are checked on a route that takes `Authorization: Bearer` (`/v1/models`)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.servers import Server, qfserve

pytestmark = pytest.mark.model

SHAPE = re.compile(r"^bce-v3/ALTAK-[A-Za-z0-9]{20}/[0-9a-f]{40}$")


def cli(server: Server, *args: str) -> str:
    return qfserve(*args, env=server.env).stdout


def models_status(server: Server, bearer: str) -> int:
    headers = {"Authorization": f"Bearer {bearer}"}
    return requests.get(f"{server.url}/v1/models", headers=headers, timeout=30).status_code


def test_v2_key_create_list_revoke(server: Server) -> None:
    app_id = str(server.create_app("v2-keys")["app_id"])
    created = json.loads(cli(server, "app", "v2-key", "create", app_id, "--json"))
    assert set(created) == {"app_id", "api_key"} and str(created["app_id"]) == app_id
    key = created["api_key"]
    assert SHAPE.match(key)
    assert models_status(server, key) == 200

    listing = cli(server, "app", "v2-key", "list", app_id, "--json")
    prefix = key.rsplit("/", 1)[0]
    assert [(k["prefix"], k["revoked"]) for k in json.loads(listing)] == [(prefix, False)]
    assert key.rsplit("/", 1)[1] not in listing

    cli(server, "app", "v2-key", "revoke", prefix)
    assert models_status(server, key) == 401
    assert json.loads(cli(server, "app", "v2-key", "list", app_id, "--json"))[0]["revoked"]
    with pytest.raises(subprocess.CalledProcessError) as again:
        cli(server, "app", "v2-key", "revoke", prefix)
    assert "no live V2 key" in again.value.stderr
    with pytest.raises(subprocess.CalledProcessError):
        cli(server, "app", "v2-key", "create", "987654")  # no such app


@pytest.fixture(scope="module")
def iam_keys(server: Server) -> dict[str, str]:
    app_id = str(server.create_app("v2-iam")["app_id"])
    return dict(json.loads(cli(server, "app", "iam-key", app_id, "--json")))


@pytest.fixture
def iam_sdk(
    server: Server, iam_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The SDK configured for V2 with an app's IAM keys, as a user would: the access and secret
    keys, and both console and IAM base URLs pointed at qfserve."""
    import qianfan
    import qianfan.config

    monkeypatch.setenv("QIANFAN_ACCESS_KEY", iam_keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", iam_keys["secret_key"])
    monkeypatch.setenv("QIANFAN_IAM_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_RETRY_COUNT", "1")
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)  # re-read the environment
    yield qianfan
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)


def test_the_sdk_fetches_a_bearer_token(iam_sdk: Any, server: Server) -> None:
    """The V2 requestor's own path: `Auth.bearer_token()` registers the IAM keys and calls
    `IAM.create_bearer_token(expire_in_seconds=43200)`, then keeps `token` until `expireTime`."""
    from qianfan.resources.requestor.openapi_requestor import QfAPIV2Requestor

    before = time.time()
    requestor = QfAPIV2Requestor()
    token = requestor._auth.bearer_token()
    assert SHAPE.match(token)
    assert requestor._auth.bearer_token() == token  # kept, not fetched again
    refreshed = requestor._refresh_bearer_token()  # what the SDK reads from the answer
    assert refreshed["token"] != token and SHAPE.match(refreshed["token"])
    assert int(before) <= refreshed["refresh_at"] <= time.time()
    assert refreshed["expire_at"] - refreshed["refresh_at"] == 43200

    assert models_status(server, token) == 200
    assert "bce-v3/" not in server.log()  # never logged


def test_a_bearer_token_expires(iam_sdk: Any, server: Server) -> None:
    from qianfan.resources.console.iam import IAM

    answer = IAM.create_bearer_token(expire_in_seconds=1)
    assert answer.code == 201
    token = answer.body["token"]
    deadline = time.monotonic() + 10
    status = models_status(server, token)
    while status == 200:
        assert time.monotonic() < deadline, "the token outlived its expireTime"
        time.sleep(0.2)
        status = models_status(server, token)
    assert status == 401


def test_a_wrong_secret_key_gets_no_token(iam_sdk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import qianfan.config
    from qianfan.errors import RequestError
    from qianfan.resources.console.iam import IAM

    monkeypatch.setenv("QIANFAN_SECRET_KEY", "0" * 32)
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    with pytest.raises(RequestError, match="401"):
        IAM.create_bearer_token(expire_in_seconds=60)
