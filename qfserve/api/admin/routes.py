"""The admin API's routes (docs/admin-api.md), each declared once in `ROUTES`: method, path,
body model, query parameters and summary. The Starlette routes and the OpenAPI document are both
built from that table, so neither can miss a route."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

from qfserve.access.attempts import TooManyFailedAttempts
from qfserve.access.usage import GROUPINGS, GroupBy, utc_instant
from qfserve.admin.audit import Actor
from qfserve.admin.request_log import LogFilter
from qfserve.admin.sessions import csrf_token
from qfserve.admin.stats import MAX_BUCKETS
from qfserve.api.admin import models, render
from qfserve.api.admin.http import (
    COOKIE,
    AdminCall,
    AdminError,
    Handler,
    bad_request,
    client_address,
    json_response,
    not_found,
)
from qfserve.api.admin.openapi import document

PREFIX = "/admin/api"
MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter, for the OpenAPI document."""

    name: str
    type: str  # a JSON Schema type: "integer", "string", "boolean"
    description: str
    enum: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdminRoute:
    method: str
    path: str  # below PREFIX, Starlette's syntax: "/apps/{app_id:int}"
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: tuple[Param, ...] = ()
    status: int = 200  # the success status
    public: bool = False  # no credentials needed: only the login


# Query parameters ---------------------------------------------------------------------------


def _text(call: AdminCall, name: str) -> str | None:
    value = call.request.query_params.get(name)
    if value is not None and "\x00" in value:
        raise bad_request(f"{name}: must not contain NUL")
    return value if value not in (None, "") else None


def _integer(
    call: AdminCall, name: str, low: int | None = None, high: int | None = None
) -> int | None:
    text = _text(call, name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name}: not an integer: {text[:40]}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low if low is not None else ''} to {high if high is not None else ''}"
        raise bad_request(f"{name}: {value} is out of range ({bounds.strip()})")
    return value


def _instant(call: AdminCall, name: str) -> datetime | None:
    text = _text(call, name)
    if text is None:
        return None
    try:
        return utc_instant(text)
    except ValueError:
        raise bad_request(f"{name}: not a date or ISO time: {text[:40]}") from None


def _limit(call: AdminCall) -> int:
    return _integer(call, "limit", 1, MAX_PAGE) or 50


def _app_id(call: AdminCall) -> int:
    return int(call.request.path_params["app_id"])


_RANGE = (
    Param("since", "string", "From this date or ISO time on (UTC without an offset)."),
    Param("until", "string", "Before this date or ISO time."),
)
_PAGE = (
    Param("before_id", "integer", "The `next_before_id` of the previous page."),
    Param("limit", "integer", f"Rows per page, 1 to {MAX_PAGE} (default 50)."),
)


# Session --------------------------------------------------------------------------------------


async def login(call: AdminCall) -> Response:
    services, body = call.services, call.body
    assert isinstance(body, models.Login)
    address = client_address(call.request)
    try:
        services.login_attempts.check(body.name, address)
    except TooManyFailedAttempts as exc:
        raise AdminError(
            429,
            "rate_limited",
            f"too many failed logins, try again in {exc.retry_after} seconds",
            {"Retry-After": str(exc.retry_after)},
        ) from None
    admin = await services.secret_checks.run(services.admins.authenticate, body.name, body.password)
    if admin is None:
        services.login_attempts.failed(body.name, address)
        await call.run(services.audit.record, Actor(body.name, address), "login.failed")
        raise AdminError(401, "unauthorized", "wrong name or password")
    session = await call.run(services.sessions.open, admin)
    await call.run(services.audit.record, Actor(admin.name, address), "login")
    response = json_response(
        {
            "name": admin.name,
            "csrf_token": session.csrf_token,
            "idle_timeout_seconds": services.sessions.idle_seconds,
        }
    )
    response.set_cookie(
        COOKIE,
        session.secret,
        max_age=services.sessions.max_seconds,
        path="/",
        secure=call.request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(call: AdminCall) -> Response:
    response = Response(status_code=204)
    if call.via == "session" and call.session_secret is not None:
        await call.run(call.services.sessions.close, call.session_secret)
        await call.run(call.services.audit.record, call.actor, "logout")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def me(call: AdminCall) -> Response:
    assert call.admin is not None
    secret = call.session_secret if call.via == "session" else None
    return json_response(
        {
            "name": call.admin.name,
            "via": call.via,
            "csrf_token": csrf_token(secret) if secret else None,
            "idle_timeout_seconds": call.services.sessions.idle_seconds if secret else None,
        }
    )


async def openapi(call: AdminCall) -> Response:
    return json_response(document(ROUTES, PREFIX, _version()))


def _version() -> str:
    try:
        return version("qfserve")
    except PackageNotFoundError:
        return "0"


async def server(call: AdminCall) -> Response:
    settings = call.services.settings
    quota, log_settings = settings.quota, settings.request_log
    return json_response(
        {
            "version": _version(),
            "endpoints": [e.name for e in settings.endpoints],
            "quota_defaults": {
                "qps": quota.qps,
                "rpm": quota.rpm,
                "tpm": quota.tpm,
                "daily": quota.daily,
                "total": quota.total,
            },
            "request_log": {
                "enabled": log_settings.enabled,
                "record_text": log_settings.record_text,
                "retention_days": log_settings.retention_days,
                "max_rows": log_settings.max_rows,
            },
            "playground_token_seconds": settings.admin.playground_token_seconds,
        }
    )


# Apps -----------------------------------------------------------------------------------------


async def list_apps(call: AdminCall) -> Response:
    include_deleted = _text(call, "include_deleted") in ("true", "1")
    apps = await call.run(
        lambda: call.services.operations.apps.all(include_deleted=include_deleted)
    )
    return json_response({"apps": [render.app(a) for a in apps]})


async def create_app(call: AdminCall) -> Response:
    assert isinstance(call.body, models.NewApp)
    created = await call.run(call.services.operations.create_app, call.actor, call.body.name)
    return json_response({"app": render.app(created.app), "secret_key": created.secret_key}, 201)


async def get_app(call: AdminCall) -> Response:
    found = await call.run(call.services.operations.apps.get, _app_id(call))
    return json_response(render.app(found))


async def delete_app(call: AdminCall) -> Response:
    await call.run(call.services.operations.delete_app, call.actor, _app_id(call))
    return Response(status_code=204)


async def disable_app(call: AdminCall) -> Response:
    found = await call.run(call.services.operations.set_disabled, call.actor, _app_id(call), True)
    return json_response(render.app(found))


async def enable_app(call: AdminCall) -> Response:
    found = await call.run(call.services.operations.set_disabled, call.actor, _app_id(call), False)
    return json_response(render.app(found))


async def rotate_secret(call: AdminCall) -> Response:
    assert isinstance(call.body, models.RotateSecret)
    keep = call.body.keep_tokens
    rotated = await call.run(
        lambda: call.services.operations.rotate_secret(call.actor, _app_id(call), keep_tokens=keep)
    )
    return json_response(
        {
            "app_id": rotated.app_id,
            "secret_key": rotated.secret_key,
            "revoked_tokens": rotated.revoked_tokens,
        }
    )


async def revoke_tokens(call: AdminCall) -> Response:
    app_id = _app_id(call)
    revoked = await call.run(call.services.operations.revoke_tokens, call.actor, app_id)
    return json_response({"app_id": app_id, "revoked_tokens": revoked})


async def set_access(call: AdminCall) -> Response:
    body = call.body
    assert isinstance(body, models.Access)
    quota: dict[str, int | None] = {}
    if body.quota is not None:
        quota = {name: getattr(body.quota, name) or 0 for name in body.quota.model_fields_set}
    endpoints: list[str] | None = None
    if "endpoints" in body.model_fields_set:
        endpoints = body.endpoints or []
        served = {e.name for e in call.services.settings.endpoints}
        unknown = sorted(set(endpoints) - served)
        if unknown:
            raise bad_request(f"endpoints: not served here: {', '.join(unknown)}")
    found = await call.run(
        call.services.operations.set_access, call.actor, _app_id(call), quota, endpoints
    )
    return json_response(render.app(found))


# Keys -----------------------------------------------------------------------------------------


async def list_keys(call: AdminCall) -> Response:
    keys = await call.run(call.services.operations.keys, _app_id(call))
    return json_response({"keys": [render.key(k) for k in keys]})


async def create_key(call: AdminCall) -> Response:
    assert isinstance(call.body, models.NewKey)
    made = await call.run(
        call.services.operations.create_key, call.actor, _app_id(call), call.body.kind
    )
    return json_response(
        {
            "kind": made.kind,
            "app_id": made.app_id,
            "prefix": made.prefix,
            "created_at": made.created_at.isoformat(),
            "secret": made.secret,
        },
        201,
    )


async def revoke_key(call: AdminCall) -> Response:
    body = call.body
    assert isinstance(body, models.RevokeKey)
    revoked = await call.run(
        call.services.operations.revoke_key, call.actor, body.kind, body.prefix
    )
    if not revoked:
        raise not_found(f"no live {body.kind} {body.prefix}")
    return json_response({"revoked": revoked})


async def playground_token(call: AdminCall) -> Response:
    assert isinstance(call.body, models.PlaygroundToken)
    lifetime = call.body.lifetime_seconds or call.services.settings.admin.playground_token_seconds
    minted = await call.run(
        call.services.operations.playground_token, call.actor, _app_id(call), lifetime
    )
    return json_response(
        {
            "app_id": minted.app_id,
            "token": minted.token,
            "expires_at": minted.expires_at,
            "chat_path": "/v2/chat/completions",
        },
        201,
    )


# Usage, dashboard, request log, endpoints, audit ---------------------------------------------


def _grouping(call: AdminCall) -> GroupBy:
    by = _text(call, "by") or "day"
    for grouping in GROUPINGS:
        if by == grouping:
            return grouping
    raise bad_request(f"by: one of {', '.join(GROUPINGS)}")


async def _usage_rows(call: AdminCall) -> tuple[GroupBy, list[dict[str, Any]]]:
    by = _grouping(call)
    app_id = _integer(call, "app_id")
    since, until = _instant(call, "since"), _instant(call, "until")
    rows = await call.run(
        lambda: call.services.ledger.summarize(app_id=app_id, since=since, until=until, by=by)
    )
    return by, [render.usage_row(r) for r in rows]


async def usage(call: AdminCall) -> Response:
    by, rows = await _usage_rows(call)
    return json_response({"by": by, "rows": rows})


_CSV_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


async def usage_csv(call: AdminCall) -> Response:
    by, rows = await _usage_rows(call)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([by, *_CSV_COLUMNS])
    for row in rows:
        writer.writerow([_cell(row["group"]), *(row[c] for c in _CSV_COLUMNS)])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="usage-by-{by}.csv"'},
    )


def _cell(text: str) -> str:
    """A client's string made inert for spreadsheets: no leading formula character."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def timeseries(call: AdminCall) -> Response:
    now = datetime.now(UTC)
    until = _instant(call, "until") or now
    since = _instant(call, "since") or until - timedelta(hours=1)
    bucket = _integer(call, "bucket_seconds", 1) or 60
    app_id, endpoint = _integer(call, "app_id"), _text(call, "endpoint")
    found = await call.run(
        lambda: call.services.dashboard.time_series(
            since, until, bucket, app_id=app_id, endpoint=endpoint
        )
    )
    return json_response(render.time_series(found))


def _status(call: AdminCall) -> str | int | None:
    text = _text(call, "status")
    if text is None or text in ("ok", "error"):
        return text
    try:
        return int(text)
    except ValueError:
        raise bad_request("status: ok, error, or an error code") from None


async def requests(call: AdminCall) -> Response:
    where = LogFilter(
        app_id=_integer(call, "app_id"),
        user_id=_text(call, "user_id"),
        endpoint=_text(call, "endpoint"),
        status=_status(call),
        since=_instant(call, "since"),
        until=_instant(call, "until"),
    )
    before_id, limit = _integer(call, "before_id"), _limit(call)
    page = await call.run(
        lambda: call.services.request_log.search(where, before_id=before_id, limit=limit)
    )
    return json_response(
        {"rows": [render.log_row(r) for r in page.rows], "next_before_id": page.next_before_id}
    )


async def endpoints(call: AdminCall) -> Response:
    return json_response(render.serving(call.services.serving_state()))


async def audit(call: AdminCall) -> Response:
    admin, action = _text(call, "admin"), _text(call, "action")
    since, until = _instant(call, "since"), _instant(call, "until")
    before_id, limit = _integer(call, "before_id"), _limit(call)
    page = await call.run(
        lambda: call.services.audit.search(
            admin=admin,
            action=action,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )
    )
    return json_response(
        {"rows": [render.audit_row(r) for r in page.rows], "next_before_id": page.next_before_id}
    )


_APP = "/apps/{app_id:int}"
_APP_FILTER = Param("app_id", "integer", "Only this app.")

ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute(
        "POST",
        "/login",
        login,
        "Sign in: a session cookie and its CSRF token.",
        models.Login,
        public=True,
    ),
    AdminRoute("POST", "/logout", logout, "End this session.", status=204),
    AdminRoute("GET", "/me", me, "Who is signed in, and the session's CSRF token."),
    AdminRoute("GET", "/openapi.json", openapi, "This document."),
    AdminRoute("GET", "/server", server, "Served endpoints, quota defaults, request log settings."),
    AdminRoute(
        "GET",
        "/apps",
        list_apps,
        "The apps, by id.",
        query=(Param("include_deleted", "boolean", "Deleted apps too."),),
    ),
    AdminRoute(
        "POST",
        "/apps",
        create_app,
        "Create an app; its Secret Key is shown once.",
        models.NewApp,
        status=201,
    ),
    AdminRoute("GET", _APP, get_app, "One app."),
    AdminRoute("DELETE", _APP, delete_app, "Delete an app (its usage is kept).", status=204),
    AdminRoute("POST", _APP + "/disable", disable_app, "Refuse the app's requests (error 15)."),
    AdminRoute("POST", _APP + "/enable", enable_app, "Accept the app's requests again."),
    AdminRoute(
        "POST",
        _APP + "/rotate-secret",
        rotate_secret,
        "A new Secret Key, shown once.",
        models.RotateSecret,
    ),
    AdminRoute("POST", _APP + "/revoke-tokens", revoke_tokens, "Revoke the app's access tokens."),
    AdminRoute(
        "PATCH", _APP + "/access", set_access, "Quotas and allowed endpoints.", models.Access
    ),
    AdminRoute("GET", _APP + "/keys", list_keys, "The app's keys of every kind, by prefix."),
    AdminRoute(
        "POST", _APP + "/keys", create_key, "Create a key; shown once.", models.NewKey, status=201
    ),
    AdminRoute(
        "POST", "/keys/revoke", revoke_key, "Revoke a key by kind and prefix.", models.RevokeKey
    ),
    AdminRoute(
        "POST",
        _APP + "/playground-token",
        playground_token,
        "A short-lived V2 bearer token of the app for the playground.",
        models.PlaygroundToken,
        status=201,
    ),
    AdminRoute(
        "GET",
        "/usage",
        usage,
        "Requests and tokens per day, endpoint, user or app.",
        query=(Param("by", "string", "The grouping.", GROUPINGS), _APP_FILTER, *_RANGE),
    ),
    AdminRoute(
        "GET",
        "/usage.csv",
        usage_csv,
        "The same as CSV.",
        query=(Param("by", "string", "The grouping.", GROUPINGS), _APP_FILTER, *_RANGE),
    ),
    AdminRoute(
        "GET",
        "/stats/timeseries",
        timeseries,
        "Requests, errors, tokens and latency per time bucket, per endpoint.",
        query=(
            *_RANGE,
            Param(
                "bucket_seconds",
                "integer",
                f"Bucket size (default 60); at most {MAX_BUCKETS} buckets.",
            ),
            _APP_FILTER,
            Param("endpoint", "string", "Only this endpoint."),
        ),
    ),
    AdminRoute(
        "GET",
        "/requests",
        requests,
        "Search the request log, newest first.",
        query=(
            _APP_FILTER,
            Param("user_id", "string", "Only this user id."),
            Param("endpoint", "string", "Only this endpoint."),
            Param("status", "string", "ok, error, or an error code."),
            *_RANGE,
            *_PAGE,
        ),
    ),
    AdminRoute("GET", "/endpoints", endpoints, "Endpoints and their replicas' health."),
    AdminRoute(
        "GET",
        "/audit",
        audit,
        "The admin audit log, newest first.",
        query=(
            Param("admin", "string", "Only this admin (or cli:<user>)."),
            Param("action", "string", "Only this action."),
            *_RANGE,
            *_PAGE,
        ),
    ),
)
