"""N streaming requests at concurrency C against one target, with a progress bar; or lanes of
them side by side, each asking in its own way."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from qfserve.bench.client import (
    TIMEOUT,
    Dialect,
    RequestRecord,
    Sampling,
    ServerTokenCounter,
    Target,
    count_tokens,
    stream_chat,
)
from qfserve.bench.memory import peak_rss
from qfserve.bench.stats import RunResult
from qfserve.bench.workload import WARM_UP, Prompt, request_messages


def progress_bar(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def client_for(concurrency: int) -> httpx.AsyncClient:
    # One connection per concurrent stream, and a spare for token counting after the run.
    size = concurrency + 1
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    return httpx.AsyncClient(limits=limits, timeout=TIMEOUT)


@dataclasses.dataclass(frozen=True, slots=True)
class Lane:
    """Some of a run's concurrent streams, asking their own share of its requests alike: request
    `i` of a lane asks `request_messages(prompts, first + i, tag)`, in `response_format` if
    given."""

    name: str
    streams: int
    requests: int
    tag: str = ""
    response_format: Mapping[str, Any] | None = None
    first: int = 0


async def run_load(
    target: Target,
    prompts: Sequence[Prompt],
    *,
    requests: int,
    concurrency: int,
    sampling: Sampling,
    progress: Progress | None = None,
    label: str = "",
    tag: str = "",
) -> RunResult:
    """Every target given the same `tag` gets the same requests (`request_messages`); C workers
    take the next index as soon as their previous answer has ended (a closed loop)."""
    lane = Lane("", concurrency, requests, tag)
    runs = await run_lanes(
        target, prompts, [lane], sampling=sampling, progress=progress, label=label
    )
    return runs[lane.name]


async def run_lanes(
    target: Target,
    prompts: Sequence[Prompt],
    lanes: Sequence[Lane],
    *,
    sampling: Sampling,
    progress: Progress | None = None,
    label: str = "",
) -> dict[str, RunResult]:
    """The lanes at once, each its own closed loop: a lane's streams take its next request as
    soon as their previous answer has ended, so that the mix of lanes in flight stays as set
    until one runs out of requests. One RunResult per lane, all with the run's wall time, its
    peak memory and its whole concurrency."""
    records = {lane.name: [RequestRecord() for _ in range(lane.requests)] for lane in lanes}
    indexes = {lane.name: itertools.count() for lane in lanes}
    concurrency = sum(lane.streams for lane in lanes)
    total = sum(lane.requests for lane in lanes)
    task = progress.add_task(label or target.name, total=total) if progress else None
    async with client_for(concurrency) as client:
        began = time.perf_counter()

        async def worker(lane: Lane) -> None:
            kept = records[lane.name]
            while (i := next(indexes[lane.name])) < lane.requests:
                start = time.perf_counter() - began
                asked = lane.first + i
                messages = request_messages(prompts, asked, lane.tag)
                record = await stream_chat(client, target, messages, sampling, lane.response_format)
                record.start_s = start
                record.lang = prompts[asked % len(prompts)].lang
                kept[i] = record
                if progress is not None and task is not None:
                    progress.advance(task)

        async with peak_rss(target.pid) as peak:
            async with asyncio.TaskGroup() as group:
                for lane in lanes:
                    for _ in range(min(lane.streams, lane.requests)):
                        group.create_task(worker(lane))
            wall_s = time.perf_counter() - began
        counter = ServerTokenCounter(target) if target.dialect is Dialect.OPENAI else None
        answered = [record for kept in records.values() for record in kept]
        await count_tokens(client, answered, sampling, counter)
    return {
        name: RunResult(
            peer=target.name,
            concurrency=concurrency,
            records=kept,
            wall_s=wall_s,
            peak_rss_bytes=peak.bytes,
        )
        for name, kept in records.items()
    }


async def warm_up(
    target: Target, sampling: Sampling, response_format: Mapping[str, Any] | None = None
) -> str | None:
    """One short unrecorded request, so that no measured request pays for first-use costs (lazy
    imports, page faults of the weights, the server's first prefill of the shared system prompt;
    with `response_format`, compiling its grammar). Returns the error, if the target cannot
    answer at all (or not in that format)."""
    short = dataclasses.replace(sampling, max_tokens=8)
    async with client_for(1) as client:
        record = await stream_chat(client, target, WARM_UP, short, response_format)
    return record.error
