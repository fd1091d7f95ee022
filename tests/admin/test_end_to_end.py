"""The admin API end to end on the fake engine: an app made over the API, its key used on the
chat routes, and what that left seen over the API again (request log, usage, dashboard, audit);
quotas set over the API refuse the chat route; the playground's token streams from the V2 route."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qfserve.config import RequestLogSettings
from tests.admin.console import SignedIn, sign_in
from tests.fake_engine import ANSWER
from tests.inprocess import InProcess, bearer, running, sse_json
from tests.pg_server import running_postgres
from tests.waiting import wait_until


def _chat(qf: InProcess, key: str, question: str, user: str | None = None) -> Any:
    body: dict[str, Any] = {
        "model": "llama_2_7b",
        "messages": [{"role": "user", "content": question}],
    }
    if user is not None:
        body["user"] = user
    return qf.client.post("/v1/chat/completions", json=body, headers=bearer(key))


def _logged(admin: SignedIn, rows: int, query: str = "") -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        got: list[dict[str, Any]] = admin.get(f"/requests{query}").json()["rows"]
        return got if len(got) >= rows else None

    return wait_until(found, what=f"{rows} request log rows")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store's URL: empty for SQLite in the data directory, or a private PostgreSQL."""
    if request.param == "sqlite":
        yield ""
        return
    with running_postgres() as url:
        yield url


def test_an_app_made_over_the_api_serves_and_shows_up_in_the_log(
    tmp_path: Path, store_url: str
) -> None:
    logged = RequestLogSettings(record_text=True)
    with running(tmp_path, request_log=logged, database_url=store_url) as qf:
        admin = sign_in(qf)
        made = admin.post("/apps", {"name": "shop"})
        assert made.status_code == 201
        app_id = made.json()["app"]["app_id"]
        key = admin.post(f"/apps/{app_id}/keys", {"kind": "app_key"}).json()["secret"]

        first = _chat(qf, key, "What is the capital of France?", user="u-1")
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == ANSWER
        assert _chat(qf, key, "And of Spain?", user="u-2").status_code == 200

        rows = _logged(admin, 2, f"?app_id={app_id}")
        newest, oldest = rows
        assert oldest["question"] == "What is the capital of France?"
        assert oldest["answer"] == ANSWER
        assert (oldest["user_id"], oldest["status"], oldest["endpoint"]) == (
            "u-1",
            0,
            "llama_2_7b",
        )
        assert oldest["completion_tokens"] == len(ANSWER.split())
        assert newest["user_id"] == "u-2" and newest["id"] > oldest["id"]
        only_u1 = admin.get("/requests?user_id=u-1").json()["rows"]
        assert [r["id"] for r in only_u1] == [oldest["id"]]
        assert admin.get("/requests?status=error").json()["rows"] == []
        page = admin.get("/requests?limit=1").json()
        assert [r["id"] for r in page["rows"]] == [newest["id"]]
        assert page["next_before_id"] == newest["id"]
        rest = admin.get(f"/requests?limit=1&before_id={page['next_before_id']}").json()
        assert [r["id"] for r in rest["rows"]] == [oldest["id"]]

        by_user = admin.get(f"/usage?by=user&app_id={app_id}").json()
        assert by_user["by"] == "user"
        assert [(r["group"], r["requests"]) for r in by_user["rows"]] == [("u-1", 1), ("u-2", 1)]
        exported = admin.get("/usage.csv?by=endpoint")
        assert exported.headers["content-type"].startswith("text/csv")
        assert 'filename="usage-by-endpoint.csv"' in exported.headers["content-disposition"]
        table = list(csv.reader(io.StringIO(exported.text)))
        assert table[0] == [
            "endpoint",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ]
        assert table[1][:2] == ["llama_2_7b", "2"]

        series = admin.get("/stats/timeseries?bucket_seconds=60").json()
        together, per_endpoint = series["series"]
        assert together["endpoint"] is None and per_endpoint["endpoint"] == "llama_2_7b"
        assert sum(together["requests"]) == 2 and sum(together["errors"]) == 0
        assert len(together["requests"]) == len(series["buckets"])
        busy = [i for i, n in enumerate(together["requests"]) if n]
        assert all(together["latency_p50_ms"][i] is not None for i in busy)

        actions = [r["action"] for r in admin.get("/audit").json()["rows"]]
        assert actions[:3] == ["key.create", "app.create", "login"]


def test_quotas_set_over_the_api_refuse_the_chat_route(qf: InProcess) -> None:
    admin = sign_in(qf)
    app_id = admin.post("/apps", {"name": "limited"}).json()["app"]["app_id"]
    key = admin.post(f"/apps/{app_id}/keys", {"kind": "app_key"}).json()["secret"]
    changed = admin.send("PATCH", f"/apps/{app_id}/access", {"quota": {"rpm": 1}})
    assert changed.status_code == 200
    assert changed.json()["quota"]["rpm"] == 1
    assert _chat(qf, key, "one").status_code == 200
    refused = _chat(qf, key, "two")
    assert refused.status_code == 429
    rows = _logged(admin, 2)
    assert rows[0]["status"] == 336501
    assert [r["id"] for r in admin.get("/requests?status=336501").json()["rows"]] == [rows[0]["id"]]
    assert admin.get("/requests?status=error").json()["rows"][0]["id"] == rows[0]["id"]

    cleared = admin.send("PATCH", f"/apps/{app_id}/access", {"quota": {"rpm": None}})
    assert cleared.json()["quota"]["rpm"] is None
    limited = admin.send("PATCH", f"/apps/{app_id}/access", {"endpoints": ["nowhere"]})
    assert limited.status_code == 400
    assert admin.send("PATCH", f"/apps/{app_id}/access", {"endpoints": ["llama_2_7b"]}).json()[
        "endpoints"
    ] == ["llama_2_7b"]
    assert (
        admin.send("PATCH", f"/apps/{app_id}/access", {"endpoints": []}).json()["endpoints"] is None
    )


def test_the_playground_token_streams_from_the_v2_route(qf: InProcess) -> None:
    admin = sign_in(qf)
    app_id = admin.post("/apps", {"name": "play"}).json()["app"]["app_id"]
    minted = admin.post(f"/apps/{app_id}/playground-token", {})
    assert minted.status_code == 201
    token = minted.json()
    assert token["chat_path"] == "/v2/chat/completions" and token["app_id"] == app_id
    reply = qf.client.post(
        token["chat_path"],
        json={
            "model": "llama_2_7b",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
        headers=bearer(token["token"]),
    )
    assert reply.status_code == 200, reply.text
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in sse_json(reply) if e["choices"]
    )
    assert text == ANSWER
    # Not among the app's keys, and refused once the app is disabled.
    assert admin.get(f"/apps/{app_id}/keys").json()["keys"] == []
    assert admin.post(f"/apps/{app_id}/disable").json()["disabled"] is True
    again = qf.client.post(
        token["chat_path"],
        json={"model": "llama_2_7b", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(token["token"]),
    )
    assert again.status_code == 401


def test_apps_and_keys_over_the_api(qf: InProcess) -> None:
    admin = sign_in(qf)
    app = admin.post("/apps", {"name": "keys"}).json()["app"]
    app_id = app["app_id"]
    assert admin.get(f"/apps/{app_id}").json() == app
    made = {
        kind: admin.post(f"/apps/{app_id}/keys", {"kind": kind}).json()
        for kind in ("app_key", "v2_key", "iam_key")
    }
    assert made["app_key"]["secret"].startswith(made["app_key"]["prefix"])
    assert made["v2_key"]["secret"].startswith(made["v2_key"]["prefix"] + "/")
    listed = admin.get(f"/apps/{app_id}/keys").json()["keys"]
    assert [(k["kind"], k["prefix"], k["revoked"]) for k in listed] == [
        (kind, made[kind]["prefix"], False) for kind in ("app_key", "v2_key", "iam_key")
    ]
    for kind in ("app_key", "v2_key", "iam_key"):
        revoked = admin.post("/keys/revoke", {"kind": kind, "prefix": made[kind]["prefix"]})
        assert revoked.json() == {"revoked": 1}
        again = admin.post("/keys/revoke", {"kind": kind, "prefix": made[kind]["prefix"]})
        assert again.status_code == 404
    listed = admin.get(f"/apps/{app_id}/keys").json()["keys"]
    assert [(k["kind"], k["revoked"]) for k in listed] == [("app_key", True), ("v2_key", True)]
    assert _chat(qf, made["app_key"]["secret"], "hi").status_code == 401

    rotated = admin.post(f"/apps/{app_id}/rotate-secret", {"keep_tokens": True}).json()
    assert rotated["app_id"] == app_id and rotated["revoked_tokens"] == 0
    assert len(rotated["secret_key"]) == 32
    assert admin.post(f"/apps/{app_id}/revoke-tokens").json() == {
        "app_id": app_id,
        "revoked_tokens": 0,
    }
    assert admin.post(f"/apps/{app_id}/disable").json()["disabled"] is True
    assert admin.post(f"/apps/{app_id}/enable").json()["disabled"] is False
    assert admin.send("DELETE", f"/apps/{app_id}").status_code == 204
    assert admin.get(f"/apps/{app_id}").status_code == 404
    assert admin.send("DELETE", f"/apps/{app_id}").status_code == 404
    assert app_id not in [a["app_id"] for a in admin.get("/apps").json()["apps"]]
    everything = admin.get("/apps?include_deleted=true").json()["apps"]
    assert [a["deleted"] for a in everything if a["app_id"] == app_id] == [True]
    bad = admin.post("/apps/1/keys", {"kind": "nonsense"})
    assert bad.status_code == 400


def test_endpoints_and_server_settings(qf: InProcess) -> None:
    admin = sign_in(qf)
    state = admin.get("/endpoints").json()
    assert state["status"] == "ok"
    (endpoint,) = state["endpoints"]
    assert endpoint["name"] == "llama_2_7b" and endpoint["ready"] is True
    assert endpoint["engine"] == "llamacpp" and endpoint["replicas"] == []
    server = admin.get("/server").json()
    assert server["endpoints"] == ["llama_2_7b"]
    assert server["quota_defaults"] == {"qps": 0, "rpm": 0, "tpm": 0, "daily": 0, "total": 0}
    assert server["request_log"]["record_text"] is False
    json.dumps(server)


def test_without_record_text_the_log_keeps_no_text(qf: InProcess) -> None:
    admin = sign_in(qf)
    app_id = admin.post("/apps", {"name": "quiet"}).json()["app"]["app_id"]
    key = admin.post(f"/apps/{app_id}/keys", {"kind": "app_key"}).json()["secret"]
    assert _chat(qf, key, "a private question").status_code == 200
    (row,) = _logged(admin, 1)
    assert row["question"] is None and row["answer"] is None


def test_bad_query_parameters_are_400(qf: InProcess) -> None:
    admin = sign_in(qf)
    for path in (
        "/usage?by=week",
        "/usage?since=yesterday",
        "/requests?limit=0",
        "/requests?app_id=x",
        "/requests?status=bad",
        "/stats/timeseries?bucket_seconds=1&since=2026-01-01&until=2026-02-01",
        "/stats/timeseries?since=2026-02-01&until=2026-01-01",
        "/requests?user_id=a%00b",
        "/audit?action=%00",
    ):
        reply = admin.get(path)
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "bad_request"), path


def test_the_server_prunes_the_request_log_in_the_background(tmp_path: Path) -> None:
    budget = RequestLogSettings(max_rows=2, prune_interval_seconds=0.05, record_text=True)
    with running(tmp_path, request_log=budget) as qf:
        admin = sign_in(qf)
        app_id = admin.post("/apps", {"name": "busy"}).json()["app"]["app_id"]
        key = admin.post(f"/apps/{app_id}/keys", {"kind": "app_key"}).json()["secret"]
        for n in range(4):
            assert _chat(qf, key, f"question {n}").status_code == 200

        def pruned() -> list[str] | None:
            rows = admin.get("/requests").json()["rows"]
            questions = [r["question"] for r in rows]
            return questions if questions == ["question 3", "question 2"] else None

        wait_until(pruned, what="the request log pruned to its newest 2 rows")
        usage = admin.get("/usage?by=app").json()["rows"]
        assert [(r["group"], r["requests"]) for r in usage] == [(str(app_id), 4)]


def test_a_streamed_answer_is_logged_whole(tmp_path: Path) -> None:
    with running(tmp_path, request_log=RequestLogSettings(record_text=True)) as qf:
        admin = sign_in(qf)
        app_id = admin.post("/apps", {"name": "streams"}).json()["app"]["app_id"]
        key = admin.post(f"/apps/{app_id}/keys", {"kind": "app_key"}).json()["secret"]
        reply = qf.client.post(
            "/v1/chat/completions",
            json={
                "model": "llama_2_7b",
                "messages": [{"role": "user", "content": "stream it"}],
                "stream": True,
            },
            headers=bearer(key),
        )
        assert reply.status_code == 200
        (row,) = _logged(admin, 1)
        assert (row["question"], row["answer"]) == ("stream it", ANSWER)
