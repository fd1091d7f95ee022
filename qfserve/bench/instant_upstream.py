"""An OpenAI-compatible upstream that answers at once, for `qfserve bench --gateway`.

A real upstream's time to first token varies by tens of milliseconds from one request to the
next on a busy machine, which buries a gateway cost of a few. In front of this one, whose answer
is ready before the request is read, the difference between asking it directly and through
qfserve is the gateway's own cost. Run as `python -m qfserve.bench.instant_upstream --port N`.

With `--first-token-delay S` it waits S seconds between the role's chunk and the first token, as
a model's prefill would, but without using the CPU: what the wait itself costs one more hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "instant"
PIECES = ("Paris", " is", " the", " capital", ".")


def _chunk(delta: dict[str, str], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "instant", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice]}
    return f"data: {json.dumps(body)}\n\n"


def create_app(first_token_delay: float = 0.0) -> Starlette:
    async def chat(request: Request) -> Response:
        asked = await request.json()
        usage = bool((asked.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            yield _chunk({"role": "assistant", "content": ""})
            if first_token_delay:
                await asyncio.sleep(first_token_delay)
            for piece in PIECES:
                yield _chunk({"content": piece})
            yield _chunk({}, "stop")
            if usage:
                counts = {"prompt_tokens": 10, "completion_tokens": len(PIECES), "total_tokens": 15}
                yield f"data: {json.dumps({'id': 'instant', 'choices': [], 'usage': counts})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()
    served = create_app(args.first_token_delay)
    uvicorn.run(served, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
