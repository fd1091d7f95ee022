"""Count the Python work a qfserve gateway does per streamed chunk, per dialect: calls, not time.

Timings of a gateway's per-chunk path are noisy on a shared machine; the number of Python
function activations (`call` events of `sys.setprofile`: a coroutine's resume counts as one) and
of builtin calls (`c_call`) on that path is not. This script starts a qfserve gateway whose main
thread is traced on demand (a `sitecustomize` on its PYTHONPATH: SIGUSR1 starts recording,
SIGUSR2 stops and writes the events to a file), in front of an upstream of its own that answers
`max_tokens` content chunks " w0", " w1", ..., each its own TCP write: the first after a pause,
the rest a few milliseconds apart, as a model's would be. For each dialect it streams one
answer of 4 and one of 40 tokens and prints:

- path: what runs from "a chunk is readable" (aiohttp's `ResponseHandler.data_received` with
  that token) to "an event is written" (the first `RequestResponseCycle.send` with a body after
  it, to its return: uvicorn's `transport.write` is a Cython method, which the profiler does not
  see), for the first token and as the median of the tokens after it; a run whose chunks came
  in one read together (a busy machine) is made again;
- per chunk: everything the request's answer costs per chunk, (40-token run - 4-token run) / 36;
- `--top N`: the functions on a later token's path, and what the first token's adds, by count;
- `--tree`: a later token's path as called.

Work of the server's own timers (uvicorn's tick, the upstream health checks) is left out.

    PYTHONPATH=$PWD .venv/bin/python scripts/chunk_path_counts.py --top 40

Another tree's gateway is counted with PYTHONPATH set to that tree (a folder holding `qfserve`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qfserve.bench import peers
from qfserve.bench.client import Sampling, Target, stream_chat
from qfserve.bench.gateway import (
    DIALECTS,
    V1_STREAM,
    gateway_keys,
    remote_endpoint,
    stream_settings,
    through,
)

TRACE_ENV = "CHUNK_PATH_TRACE"  # where the traced gateway writes its events
FIRST_TOKEN_PAUSE_S = 0.05
CHUNK_GAP_S = 0.01
SHORT, LONG = 4, 40
# Roots of work that is the server's own, not the request's.
BACKGROUND = (
    "uvicorn/server.py:",
    "RemoteEngine._watch",
    "HealthChecker",
    "server.py:_reload_lists",
)

# Installed in the gateway's interpreter. Events are (kind, key, note): kind "call" (a Python
# frame activated), "return", "c" (a builtin called); a note on the two markers.
_SITECUSTOMIZE = textwrap.dedent(
    """
    import json, os, signal, sys

    _out = os.environ.get("CHUNK_PATH_TRACE")
    if _out:
        _events = []

        def _hook(frame, event, arg):
            code = frame.f_code
            if event == "call":
                where = code.co_filename
                if "site-packages/" in where:
                    where = where.rsplit("site-packages/", 1)[-1]
                else:
                    where = where.rsplit("/qfserve/", 1)[-1]
                note = ""
                if code.co_qualname == "ResponseHandler.data_received":
                    note = repr(frame.f_locals.get("data", b""))
                elif code.co_qualname == "RequestResponseCycle.send":
                    message = frame.f_locals.get("message") or {}
                    note = repr(message.get("body", b""))
                _events.append(("call", f"{where}:{code.co_qualname}", note))
            elif event == "return":
                _events.append(("return", "", ""))
            elif event == "c_call":
                name = getattr(arg, "__qualname__", None) or getattr(arg, "__name__", "?")
                owner = type(getattr(arg, "__self__", None)).__name__
                _events.append(("c", f"{owner}.{name}", code.co_qualname))

        def _start(signum, frame):
            _events.clear()
            sys.setprofile(_hook)

        def _stop(signum, frame):
            sys.setprofile(None)
            with open(_out + ".part", "w") as out:
                json.dump(_events, out)
            os.replace(_out + ".part", _out)
            _events.clear()

        signal.signal(signal.SIGUSR1, _start)
        signal.signal(signal.SIGUSR2, _stop)
    """
)


def token(index: int) -> str:
    return f" w{index}"


def upstream_app() -> Starlette:
    """An OpenAI-compatible upstream answering `max_tokens` chunks, each its own write."""

    def event(delta: dict[str, str], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    async def chat(request: Request) -> Response:
        asked = await request.json()
        count = int(asked.get("max_tokens") or SHORT)

        async def events() -> AsyncIterator[str]:
            yield event({"role": "assistant", "content": ""})
            await asyncio.sleep(FIRST_TOKEN_PAUSE_S)
            for index in range(count):
                if index:
                    await asyncio.sleep(CHUNK_GAP_S)
                yield event({"content": token(index)})
            await asyncio.sleep(CHUNK_GAP_S)
            usage = {"prompt_tokens": 10, "completion_tokens": count, "total_tokens": 10 + count}
            yield event({}, "length") + f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health),
        ]
    )


@dataclass(frozen=True, slots=True)
class Trace:
    """One request's events in the gateway's main thread, the server's own work left out."""

    events: list[tuple[str, str, str]]

    @classmethod
    def of(cls, raw: list[list[str]]) -> Trace:
        kept: list[tuple[str, str, str]] = []
        depth = 0
        skipping = False
        for kind, key, note in raw:
            if kind == "call":
                if depth == 0:
                    skipping = any(root in key for root in BACKGROUND)
                depth += 1
            elif kind == "return":
                if depth == 0:
                    continue  # a frame active when tracing began
                depth -= 1
            if not skipping:
                kept.append((kind, key, note))
        return cls(kept)

    def work(self, events: list[tuple[str, str, str]] | None = None) -> Counter[str]:
        """Python activations and builtin calls, by function."""
        counted: Counter[str] = Counter()
        for kind, key, _ in self.events if events is None else events:
            if kind in ("call", "c"):
                counted[key if kind == "call" else "builtin " + key] += 1
        return counted

    def arrivals(self) -> list[tuple[int, list[int]]]:
        """Where upstream data arrived, and the tokens it carried."""
        found = []
        for n, (kind, key, note) in enumerate(self.events):
            if kind == "call" and key.endswith("ResponseHandler.data_received"):
                found.append((n, [int(t) for t in re.findall(r'"content": " w(\d+)"', note)]))
        return found

    def coalesced(self) -> bool:
        """Whether two tokens arrived in one read (a busy machine): the run does not count."""
        return any(len(tokens) > 1 for _, tokens in self.arrivals())

    def paths(self) -> list[list[tuple[str, str, str]]]:
        """For each token: from the upstream data that carries it to the first event written
        after it (V1's segmenter may hold a token's text back to the next event)."""
        found = []
        for arrived, tokens in self.arrivals():
            if not tokens:
                continue
            sending = next(
                n
                for n, (kind, key, note) in enumerate(self.events)
                if n > arrived and kind == "call" and key.endswith("RequestResponseCycle.send")
                if note not in ("", "b''")
            )
            found.append(self.events[arrived : self._returned(sending) + 1])
        return found

    def _returned(self, called: int) -> int:
        """Where the frame activated at `called` returns."""
        depth = 0
        for n in range(called, len(self.events)):
            kind = self.events[n][0]
            depth += 1 if kind == "call" else -1 if kind == "return" else 0
            if depth == 0:
                return n
        return len(self.events) - 1


def size(counted: Counter[str]) -> tuple[int, int]:
    """(Python activations, builtin calls)."""
    python = sum(n for key, n in counted.items() if not key.startswith("builtin "))
    return python, sum(counted.values()) - python


async def traced(pid: int, out: Path, request: Callable[[], Awaitable[None]]) -> Trace:
    """The trace of one request, made again while its chunks were read together."""
    for _ in range(10):
        await asyncio.to_thread(out.unlink, missing_ok=True)
        os.kill(pid, signal.SIGUSR1)
        await request()
        await asyncio.sleep(0.3)  # the request's own clean-up after its last byte
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(out.exists):
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway wrote no trace")
            await asyncio.sleep(0.05)
        trace = Trace.of(json.loads(await asyncio.to_thread(out.read_text)))
        if not trace.coalesced():
            return trace
    raise RuntimeError("the machine is too busy: chunks keep arriving together")


@contextlib.asynccontextmanager
async def serving_upstream() -> AsyncIterator[str]:
    port = peers.free_port()
    config = uvicorn.Config(upstream_app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def main(dialects: list[str], top: int, tree: bool, default_stream: bool) -> None:
    messages = [{"role": "user", "content": "Say something."}]
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        (workdir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        out = workdir / "trace.json"
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(workdir), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        os.environ[TRACE_ENV] = str(out)
        async with serving_upstream() as upstream_url:
            config = workdir / "gateway.toml"
            segments = "" if default_stream else stream_settings(V1_STREAM)
            config.write_text(segments + remote_endpoint("counted", "m", upstream_url))
            gateway = await peers.start_qfserve(
                model=None, threads=1, workdir=workdir / "gateway", config=config
            )
            try:
                keys = await gateway_keys(gateway)
                pid = gateway.process.pid
                async with httpx.AsyncClient() as client:
                    for dialect in dialects:
                        target = through(gateway, dialect, "counted", dialect=dialect, keys=keys)

                        async def ask(tokens: int, target: Target = target) -> None:
                            sampling = Sampling(max_tokens=tokens)
                            record = await stream_chat(client, target, messages, sampling)
                            if record.error is not None:
                                raise RuntimeError(record.error)

                        for _ in range(3):
                            await ask(SHORT)
                        short = await traced(pid, out, functools.partial(ask, SHORT))
                        long = await traced(pid, out, functools.partial(ask, LONG))
                        if default_stream:
                            print(f"{dialect}:")
                            print_per_chunk(short, long, top)
                        else:
                            report(dialect, short, long, top, tree)
            finally:
                gateway.stop()


def print_per_chunk(short: Trace, long: Trace, top: int) -> None:
    per_chunk = long.work()
    per_chunk.subtract(short.work())
    total_py, total_c = size(per_chunk)
    print(
        f"  per chunk, everything: {total_py / (LONG - SHORT):5.1f} python + "
        f"{total_c / (LONG - SHORT):5.1f} builtin calls"
    )
    if top:
        print("  per chunk, everything, by function:")
        for key, count in per_chunk.most_common(top):
            print(f"    {count / (LONG - SHORT):5.2f}  {key}")
    sys.stdout.flush()


def report(dialect: str, short: Trace, long: Trace, top: int, tree: bool) -> None:
    paths = [long.work(path) for path in long.paths()]
    first = size(paths[0])
    steady = [size(counted) for counted in paths[2:-1]]
    print(f"{dialect}:")
    print(f"  path, first token:     {first[0]:5d} python + {first[1]:5d} builtin calls")
    print(
        f"  path, later tokens:    {statistics.median(p for p, _ in steady):5.0f} python + "
        f"{statistics.median(c for _, c in steady):5.0f} builtin calls (median)"
    )
    print_per_chunk(short, long, 0)
    if tree:
        print("  the path of a later token, as called:")
        depth = 0
        for kind, key, _ in long.paths()[len(paths) // 2]:
            if kind == "call":
                print("    " + "  " * depth + key)
                depth += 1
            elif kind == "return":
                depth -= 1
            else:
                print("    " + "  " * depth + "  builtin " + key)
    if top:
        middle = paths[len(paths) // 2]
        print("  the path of a later token:")
        for key, count in middle.most_common(top):
            print(f"    {count:4d}  {key}")
        print("  the first token's path, beyond a later token's:")
        extra = paths[0].copy()
        extra.subtract(middle)
        for key, count in extra.most_common(top):
            if count > 0:
                print(f"    {count:4d}  {key}")
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialect", action="append", choices=DIALECTS, help="default: all")
    parser.add_argument("--top", type=int, default=0, help="list the N commonest functions")
    parser.add_argument("--tree", action="store_true", help="print a later token's calls")
    parser.add_argument(
        "--default-stream",
        action="store_true",
        help="V1 segments as qfserve's defaults cut them, not a token an event (per chunk only)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.dialect or list(DIALECTS), args.top, args.tree, args.default_stream))
