"""The admin surface over HTTP: the JSON API under `/admin/api` and the console's static files
under `/console/` (from `qfserve/console/static/`, when that directory exists).

`build_routes` gives the Starlette routes to add to the server; `AdminSocketOnly` keeps them off
every socket but the admin one when the admin surface has a port of its own."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from qfserve.admin.services import AdminServices
from qfserve.api.admin.http import HANDLERS, AdminError, endpoint, error_response
from qfserve.api.admin.routes import PREFIX, ROUTES

CONSOLE_PATH = "/console"
CONSOLE_STATIC = Path(__file__).resolve().parents[2] / "console" / "static"


def api_app(services: AdminServices) -> Starlette:
    """The API as an app of its own: its errors, 404 and 405 included, in its own shape."""
    routes = [
        Route(
            route.path,
            endpoint(route.handler, services, route.body, public=route.public),
            methods=[route.method],
        )
        for route in ROUTES
    ]
    return Starlette(routes=routes, exception_handlers=HANDLERS)


def build_routes(services: AdminServices, static: Path | None = None) -> list[BaseRoute]:
    """The API's mount, and the console's when its static files are there (`static`, by
    default `qfserve/console/static/`)."""
    static = static or CONSOLE_STATIC
    routes: list[BaseRoute] = [Mount(PREFIX, app=api_app(services))]
    if static.is_dir():
        routes += [
            Route(CONSOLE_PATH, lambda _request: RedirectResponse(CONSOLE_PATH + "/")),
            Mount(CONSOLE_PATH, app=StaticFiles(directory=static, html=True)),
        ]
    return routes


def is_admin_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ("/admin", CONSOLE_PATH))


class AdminSocketOnly:
    """ASGI middleware: `/admin/...` and `/console/...` are answered 404 on every listening
    socket but the admin one (`admin_port`); everything else passes through untouched."""

    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self._app = app
        self._admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_admin_path(scope["path"]):
            server = scope.get("server") or ("", None)
            if server[1] != self._admin_port:
                response = error_response(AdminError(404, "not_found", "not found"))
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
