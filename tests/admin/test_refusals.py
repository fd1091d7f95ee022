"""Every admin route, taken from the one route table so that a new route cannot escape: refused
without a session or token (401), with an unknown token (401), and, for every changing method on
a session, without the CSRF token or with a wrong one (403). The OpenAPI document lists them all."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Mount, Route

from qfserve.api.admin import routes as admin_routes
from qfserve.api.admin.openapi import openapi_path
from qfserve.api.admin.routes import PREFIX, ROUTES, AdminRoute
from tests.admin.console import admin_token, sign_in
from tests.inprocess import InProcess

GUARDED = [r for r in ROUTES if not r.public]


def _url(route: AdminRoute, app_id: int = 1) -> str:
    return PREFIX + re.sub(r"\{app_id:int\}", str(app_id), route.path)


def _label(route: AdminRoute) -> str:
    return f"{route.method} {route.path}"


def test_only_the_login_is_public() -> None:
    assert [(r.method, r.path) for r in ROUTES if r.public] == [("POST", "/login")]


def test_the_server_mounts_exactly_the_route_table(qf: InProcess) -> None:
    (mount,) = [r for r in qf.service.app.routes if isinstance(r, Mount) and r.path == PREFIX]
    mounted = {
        (method, r.path)
        for r in mount.routes
        if isinstance(r, Route)
        for method in (r.methods or set()) - {"HEAD"}
    }
    assert mounted == {(r.method, r.path) for r in ROUTES}


@pytest.mark.parametrize("route", GUARDED, ids=_label)
def test_refused_without_credentials(fresh: InProcess, route: AdminRoute) -> None:
    qf = fresh
    app = qf.new_app("target")
    reply = qf.client.request(route.method, _url(route, app.app_id), json={})
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["code"] == "unauthorized"
    forged = qf.client.request(
        route.method,
        _url(route, app.app_id),
        json={},
        headers={"Authorization": "Bearer qfa-not-a-real-token"},
    )
    assert forged.status_code == 401, forged.text


@pytest.mark.parametrize("route", [r for r in GUARDED if r.method != "GET"], ids=_label)
def test_changes_on_a_session_need_its_csrf_token(fresh: InProcess, route: AdminRoute) -> None:
    qf = fresh
    app = qf.new_app("target")
    admin = sign_in(qf)
    url = _url(route, app.app_id)
    missing = qf.client.request(route.method, url, json={})
    assert missing.status_code == 403, missing.text
    assert missing.json()["error"]["code"] == "csrf"
    wrong = qf.client.request(route.method, url, json={}, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403, wrong.text
    # The token of another session is wrong too.
    other = sign_in(qf, "other")
    qf.client.cookies.clear()
    again = sign_in(qf, "third")
    stolen = qf.client.request(
        route.method, url, json={}, headers={"X-CSRF-Token": other.csrf_token}
    )
    assert stolen.status_code == 403, stolen.text
    # Nothing changed: the app is as it was.
    assert qf.store.apps.get(app.app_id).disabled is False
    assert admin.csrf_token != again.csrf_token


@pytest.mark.parametrize("route", [r for r in GUARDED if r.method == "GET"], ids=_label)
def test_reads_pass_with_a_session_or_a_token(fresh: InProcess, route: AdminRoute) -> None:
    qf = fresh
    app = qf.new_app("target")
    token = admin_token(qf)
    by_token = qf.client.get(_url(route, app.app_id), headers={"Authorization": f"Bearer {token}"})
    assert by_token.status_code == 200, by_token.text
    sign_in(qf)
    by_session = qf.client.get(_url(route, app.app_id))
    assert by_session.status_code == 200, by_session.text


def test_a_bearer_token_needs_no_csrf_token(qf: InProcess) -> None:
    token = admin_token(qf)
    reply = qf.client.post(
        f"{PREFIX}/apps", json={"name": "scripted"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 201, reply.text


def test_the_openapi_document_lists_every_route(qf: InProcess) -> None:
    document = qf.client.get(
        f"{PREFIX}/openapi.json", headers={"Authorization": f"Bearer {admin_token(qf)}"}
    ).json()
    listed = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert listed == {(r.method, PREFIX + openapi_path(r.path)) for r in ROUTES}
    create = document["paths"][f"{PREFIX}/apps"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/NewApp"
    )
    assert "name" in document["components"]["schemas"]["NewApp"]["properties"]


def test_unknown_admin_paths_and_methods_answer_in_the_admin_shape(qf: InProcess) -> None:
    token = {"Authorization": f"Bearer {admin_token(qf)}"}
    missing = qf.client.get(f"{PREFIX}/nothing-here", headers=token)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    wrong = qf.client.put(f"{PREFIX}/apps", headers=token)
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")


def test_route_handlers_are_named_after_what_they_do() -> None:
    # operationIds come from the handlers' names: they must be unique.
    names = [r.handler.__name__ for r in ROUTES]
    assert len(set(names)) == len(names)
    assert all(hasattr(admin_routes, name) for name in names)
