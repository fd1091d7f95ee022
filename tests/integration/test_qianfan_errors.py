"""Every error of the spec's table that the chat slice covers, against a real server."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

import pytest
import requests

from tests.servers import Server

pytestmark = pytest.mark.model

QUESTION = [{"role": "user", "content": "Hello"}]


def post(url: str, **kwargs: Any) -> requests.Response:
    return requests.post(url, timeout=60, **kwargs)


def assert_error(reply: requests.Response, code: int, message: str | None = None) -> None:
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert "\n" not in reply.text.strip(), "errors must be one line"
    body = reply.json()
    assert body["error_code"] == code, body
    assert body["id"].startswith("as-")
    if message is not None:
        assert body["error_msg"] == message


def oauth(server: Server, **params: str) -> requests.Response:
    return post(f"{server.url}/oauth/2.0/token", params=params)


def test_token_success_shape(server: Server, app: dict[str, str]) -> None:
    reply = oauth(
        server,
        grant_type="client_credentials",
        client_id=app["api_key"],
        client_secret=app["secret_key"],
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["expires_in"] == 2592000
    assert body["access_token"].startswith("24.")
    assert body["access_token"].endswith(f"-{app['app_id']}")
    assert body["refresh_token"].startswith("25.")
    for key in ("scope", "session_key", "session_secret"):
        assert body[key]


def test_token_by_get_and_by_form(server: Server, app: dict[str, str]) -> None:
    fields = {
        "grant_type": "client_credentials",
        "client_id": app["api_key"],
        "client_secret": app["secret_key"],
    }
    by_get = requests.get(f"{server.url}/oauth/2.0/token", params=fields, timeout=30)
    by_form = post(f"{server.url}/oauth/2.0/token", data=fields)
    assert by_get.status_code == by_form.status_code == 200
    assert by_get.json()["access_token"] != by_form.json()["access_token"]


def test_token_errors(server: Server, app: dict[str, str]) -> None:
    unknown = oauth(server, grant_type="client_credentials", client_id="nobody", client_secret="x")
    assert unknown.status_code == 401
    assert unknown.json() == {"error": "invalid_client", "error_description": "unknown client id"}
    wrong = oauth(
        server, grant_type="client_credentials", client_id=app["api_key"], client_secret="wrong"
    )
    assert wrong.status_code == 401
    assert wrong.json()["error_description"] == "Client authentication failed"
    for grant in ({}, {"grant_type": "password"}):
        bad = oauth(server, client_id=app["api_key"], client_secret=app["secret_key"], **grant)
        assert bad.status_code == 400
        assert bad.json()["error"] == "unsupported_grant_type"


def test_unknown_route_is_3(server: Server) -> None:
    assert_error(post(f"{server.url}/rpc/2.0/ai_custom/v1/nothing"), 3)


def test_missing_or_malformed_token_is_100(server: Server) -> None:
    base = f"{server.url}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/llama_2_7b"
    missing = "Invalid parameter: access_token is missing"
    assert_error(post(base, json={"messages": QUESTION}), 100, missing)
    malformed = "Invalid parameter: access_token is malformed"
    assert_error(post(base + "?access_token=garbage", json={"messages": QUESTION}), 100, malformed)


def test_unknown_token_is_110(server: Server) -> None:
    forged = "24." + "0" * 32 + ".2592000.1999999999.1-1"
    assert_error(post(server.chat_url(forged), json={"messages": QUESTION}), 110)


def test_expired_token_is_111(server: Server, app: dict[str, str]) -> None:
    token = server.token(app)
    digest = hashlib.sha256(token.encode()).hexdigest()
    with sqlite3.connect(server.data_dir / "qfserve.db") as db:
        db.execute("UPDATE access_tokens SET expires_at = 1 WHERE token_hash = ?", (digest,))
    assert_error(
        post(server.chat_url(token), json={"messages": QUESTION}), 111, "Access token expired"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", 336002),
        (b"[1, 2]", 336001),
        (b'{"messages": "hello"}', 336001),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 336001),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 336001),
    ],
)
def test_bad_bodies(server: Server, token: str, body: bytes, code: int) -> None:
    assert_error(post(server.chat_url(token), data=body), code)


LONG = "x" * 2001


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": []}, "the messages must not be empty"),
        (
            {"messages": [*QUESTION, {"role": "assistant", "content": "Hi"}]},
            "the length of messages must be an odd number",
        ),
        (
            {"messages": [*QUESTION, {"role": "user", "content": "a"}, *QUESTION]},
            "the role of message with odd index in the messages must be assistant",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}]},
            "the role of message with even index in the messages must be user",
        ),
        (
            {"messages": [{"role": "user", "content": LONG}]},
            "the max length of current question is 2000",
        ),
        ({"messages": QUESTION, "temperature": 0}, "temperature must be in (0, 1]"),
        ({"messages": QUESTION, "temperature": 1.5}, "temperature must be in (0, 1]"),
        ({"messages": QUESTION, "top_p": 1.5}, "top_p must be in [0, 1]"),
        ({"messages": QUESTION, "top_k": 0}, "top_k must be >= 1"),
        ({"messages": QUESTION, "penalty_score": 2.5}, "penalty_score must be in [1, 2]"),
        (
            {"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]},
            "the length of stop must be at most 4",
        ),
        ({"messages": QUESTION, "stop": ["y" * 21]}, "each stop must be at most 20 characters"),
        ({"messages": QUESTION, "max_output_tokens": 1}, "max_output_tokens must be in [2, 2048]"),
        (
            {"messages": QUESTION, "max_output_tokens": 4096},
            "max_output_tokens must be in [2, 2048]",
        ),
        ({"messages": QUESTION, "system": LONG}, "the max length of system is 2000"),
    ],
)
def test_rule_violations_are_336003(
    server: Server, token: str, fields: dict[str, Any], message: str
) -> None:
    assert_error(post(server.chat_url(token), json=fields), 336003, message)


def test_rule_violation_on_a_stream_is_plain_json(server: Server, token: str) -> None:
    reply = post(server.chat_url(token), json={"messages": [], "stream": True})
    assert_error(reply, 336003)


def test_unknown_endpoint_is_336005(server: Server, token: str) -> None:
    assert_error(
        post(server.chat_url(token, "no_such_model"), json={"messages": QUESTION}),
        336005,
        "API name not exist",
    )


def test_wrong_method_is_336101(server: Server, token: str) -> None:
    assert_error(requests.get(server.chat_url(token), timeout=30), 336101, "Invalid HTTP Method")


def test_null_and_unknown_fields_are_ignored(server: Server, token: str) -> None:
    reply = post(
        server.chat_url(token),
        json={
            "messages": QUESTION,
            "stop": None,
            "temperature": None,
            "extra_parameters": {"x": 1},
            "request_timeout": 60,
            "max_output_tokens": 4,
        },
    )
    assert reply.json()["usage"]["completion_tokens"] <= 4
