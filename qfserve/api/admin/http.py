"""The admin API's edge: who is calling (session cookie or bearer token), the CSRF check, the JSON
body, and every error in the one shape `{"error": {"code", "message"}}`. Routes stay thin: they
get an `AdminCall` and return a response; what they raise is mapped here."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from qfserve.access.apps import AppNotFound
from qfserve.admin.audit import Actor
from qfserve.admin.credentials import Admin
from qfserve.admin.services import AdminServices
from qfserve.admin.sessions import csrf_matches

log = logging.getLogger(__name__)

COOKIE = "qfserve_admin"
CSRF_HEADER = "X-CSRF-Token"
MAX_BODY_BYTES = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD"})


class AdminError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def bad_request(message: str) -> AdminError:
    return AdminError(400, "bad_request", message)


def not_found(message: str) -> AdminError:
    return AdminError(404, "not_found", message)


UNAUTHORIZED = AdminError(401, "unauthorized", "sign in, or send an admin bearer token")


def error_response(error: AdminError) -> Response:
    return json_response(
        {"error": {"code": error.code, "message": error.message}}, error.status, error.headers
    )


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


# On every answer of the API: secrets shown once must not rest in a browser's or a proxy's cache.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(content, default=_plain, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status, {**NO_STORE, **(headers or {})}, media_type="application/json")


@dataclass(frozen=True, slots=True)
class AdminCall:
    """One authenticated call: the request, who makes it, and its parsed body."""

    request: Request
    services: AdminServices
    admin: Admin | None  # None only on the login route
    via: Literal["session", "token", "none"]
    session_secret: str | None
    body: Any

    @property
    def actor(self) -> Actor:
        name = self.admin.name if self.admin is not None else ""
        return Actor(name, client_address(self.request))

    async def run(self, work: Callable[..., Any], *args: Any) -> Any:
        """A blocking service call, in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: work(*args))


Handler = Callable[[AdminCall], Awaitable[Response]]


# Sent (as "1") by a page's own timed refresh, not by something the admin did.
BACKGROUND_HEADER = "X-Admin-Background"


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def bearer_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" and credential.strip() else None


async def _who(
    request: Request, services: AdminServices
) -> tuple[Admin, Literal["session", "token"], str | None]:
    token = bearer_of(request)
    if token is not None:
        admin = await anyio.to_thread.run_sync(services.admins.verify_token, token)
        if admin is None:
            raise UNAUTHORIZED
        return admin, "token", None
    secret = request.cookies.get(COOKIE, "")
    # A console page refreshing itself on a timer says so: it must not keep an unattended
    # session alive forever.
    active = request.headers.get(BACKGROUND_HEADER) != "1"
    session_admin = (
        await anyio.to_thread.run_sync(
            functools.partial(services.sessions.resolve, secret, active=active)
        )
        if secret
        else None
    )
    if session_admin is None:
        raise UNAUTHORIZED
    return session_admin, "session", secret


async def _body(request: Request, model: type[BaseModel] | None) -> Any:
    if model is None:
        return None
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise AdminError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raw = b"{}"
    elif request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise AdminError(415, "unsupported_media_type", "send the body as application/json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise bad_request(_first_problem(exc)) from None


def _first_problem(exc: ValidationError) -> str:
    problem = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    if problem["type"] == "json_invalid":
        return "the body is not JSON"
    return f"{where}: {problem['msg']}"


def endpoint(
    handler: Handler,
    services: AdminServices,
    body: type[BaseModel] | None,
    *,
    public: bool = False,
) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of an admin route: credentials (401), then the CSRF token of a
    session's unsafe request (403), then the body (400, 413, 415), then the route."""

    async def serve(request: Request) -> Response:
        try:
            if public:
                call = AdminCall(request, services, None, "none", None, await _body(request, body))
            else:
                admin, via, secret = await _who(request, services)
                if (
                    via == "session"
                    and secret is not None
                    and request.method not in SAFE_METHODS
                    and not csrf_matches(secret, request.headers.get(CSRF_HEADER))
                ):
                    raise AdminError(403, "csrf", f"send the session's CSRF token in {CSRF_HEADER}")
                call = AdminCall(request, services, admin, via, secret, await _body(request, body))
            return await handler(call)
        except AdminError as error:
            return error_response(error)
        except AppNotFound as exc:
            return error_response(not_found(str(exc)))
        except ValueError as exc:
            return error_response(bad_request(str(exc)))
        except SQLAlchemyError as exc:
            log.warning("admin API: the store could not be used: %s", type(exc).__name__)
            return error_response(
                AdminError(503, "unavailable", "the database is unavailable, try again shortly")
            )

    return serve


async def http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(AdminError(405, "method_not_allowed", "method not allowed"))
    return error_response(not_found("no such admin route"))


async def abandoned(_request: Request, _exc: Exception) -> Response:
    return Response(status_code=400)


async def unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(AdminError(500, "internal", "internal error"))


HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    HTTPException: http_error,
    ClientDisconnect: abandoned,
    Exception: unexpected,
}
