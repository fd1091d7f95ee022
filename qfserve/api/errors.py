"""Errors answered in the shape of the dialect whose path they came on: Qianfan V2's and OpenAI's
with real statuses, Qianfan V1's (HTTP 200, `error_code`) for the rest. One handler per kind of
failure, for the whole app: routes raise, they do not catch."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from qfserve.api import calls
from qfserve.api.openai.render import OPENAI
from qfserve.api.qianfan_v1 import render as qianfan_v1
from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.api.responses import ClientGone
from qfserve.errors import InternalError, MethodNotAllowed, QfserveError, UnknownRoute

log = logging.getLogger(__name__)


def error_response(path: str, error: QfserveError) -> Response:
    if path.startswith(("/v2/", "/v1/BCE-BEARER/")) or path == "/v2":
        return QIANFAN_V2.error_response(error)
    if path.startswith("/v1/"):
        return OPENAI.error_response(error)
    return qianfan_v1.error_response(error)


async def qfserve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QfserveError)
    return error_response(request.url.path, exc)


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods (Starlette's own 404 and 405)."""
    wrong_method = isinstance(exc, HTTPException) and exc.status_code == 405
    error = MethodNotAllowed() if wrong_method else UnknownRoute()
    return error_response(request.url.path, error)


async def abandoned(_request: Request, _exc: Exception) -> Response:
    """The client went away, or was cut off for being too slow, before its request arrived
    whole: no one is left to answer, and nothing went wrong here."""
    return Response(status_code=400)


async def unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered as an internal error without details."""
    error = InternalError()
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, error)


HANDLERS = {
    HTTPException: http_error,
    QfserveError: qfserve_error,
    ClientGone: calls.client_gone,
    ClientDisconnect: abandoned,
    Exception: unexpected,
}
