"""What every dialect's chat route does around the pipeline: read the body within its bound, run
the call while watching for the client's disconnect, and answer errors in the dialect's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from qfserve.access.gate import CLIENT_GONE, Credentials
from qfserve.api.qianfan_v1.render import new_request_id
from qfserve.api.responses import until_disconnect
from qfserve.errors import BodyTooLarge, InvalidArgument, InvalidJSON
from qfserve.serving.pipeline import ChatPipeline
from qfserve.serving.request import ChatRequest, Outcome

Body = TypeVar("Body", bound=BaseModel)
# pydantic-core's reasons for refusing JSON that is well formed: an escaped lone surrogate (no
# text can hold it), a number past any numeric type, nesting past the parser's depth.
_REFUSED_BUT_WELL_FORMED = (
    "unexpected end of hex escape",
    "invalid unicode code point",
    "lone leading surrogate",
    "number out of range",
    "recursion limit exceeded",
)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (before it is read whole) once it is longer than `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"Invalid Argument: the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Invalid Argument: the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, model: type[Body]) -> Body:
    """The body as `model`: 336002 if it is not JSON, 336001 if it is not the model's shape.

    Parsed and validated in one pass by pydantic-core (a third of the time of `json.loads` and
    then validating), whose parser also refuses, as the client's error, what Python's `json`
    would let through to fail later: lone surrogates, integers of thousands of digits, nesting
    deep enough to exhaust the stack."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            reason = str(first.get("ctx", {}).get("error", ""))
            if reason.startswith(_REFUSED_BUT_WELL_FORMED):
                # JSON's grammar allows these; the server does not take them.
                raise InvalidArgument(f"Invalid Argument: {reason}") from None
            raise InvalidJSON() from None
        if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
            raise InvalidArgument("Invalid Argument: the body must be a JSON object") from None
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidArgument(f"Invalid Argument: {where}: {first['msg']}") from None


async def run_chat(
    request: Request,
    pipeline: ChatPipeline,
    credentials: Credentials,
    parse: Callable[[], ChatRequest],
) -> Outcome:
    """The pipeline's outcome, or its error raised for the dialect's handler. A client that
    leaves first stops its generation (`ClientGone`, answered by `client_gone`)."""
    return await until_disconnect(
        request.receive, pipeline.run(new_request_id(), credentials, parse)
    )


async def client_gone(_request: Request, _exc: Exception) -> Response:
    # Nobody reads this; the status is what the server's own accounting sees.
    return Response(status_code=CLIENT_GONE)


def chat_route(path: str, handle: Callable[[Request], Awaitable[Response]]) -> Route:
    """A chat route (POST) whose endpoint is a plain ASGI app, not Starlette's request-response
    wrapper: a streamed answer is resumed, for every event, through every frame above it, and
    the wrapper's (three, and a hook on each send) only repeat what the app's exception
    middleware does for every route, with the same handlers."""
    return Route(path, _Endpoint(handle), methods=["POST"])


class _Endpoint:
    """An ASGI app of a request handler (a class instance: Starlette takes a function for one
    that needs its wrapper)."""

    def __init__(self, handle: Callable[[Request], Awaitable[Response]]) -> None:
        self._handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._handle(Request(scope, receive, send))
        await response(scope, receive, send)
