"""N streaming requests at concurrency C against one target, with a progress bar."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Sequence

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
    records: list[RequestRecord] = [RequestRecord() for _ in range(requests)]
    indexes = itertools.count()
    task = progress.add_task(label or target.name, total=requests) if progress else None
    async with client_for(concurrency) as client:
        began = time.perf_counter()

        async def worker() -> None:
            while (i := next(indexes)) < requests:
                start = time.perf_counter() - began
                messages = request_messages(prompts, i, tag)
                record = await stream_chat(client, target, messages, sampling)
                record.start_s = start
                records[i] = record
                if progress is not None and task is not None:
                    progress.advance(task)

        async with peak_rss(target.pid) as peak:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, requests)):
                    group.create_task(worker())
            wall_s = time.perf_counter() - began
        counter = ServerTokenCounter(target) if target.dialect is Dialect.OPENAI else None
        await count_tokens(client, records, sampling, counter)
    return RunResult(
        peer=target.name,
        concurrency=concurrency,
        records=records,
        wall_s=wall_s,
        peak_rss_bytes=peak.bytes,
    )


async def warm_up(target: Target, sampling: Sampling) -> str | None:
    """One short unrecorded request, so that no measured request pays for first-use costs (lazy
    imports, page faults of the weights, the server's first prefill of the shared system prompt).
    Returns the error, if the target cannot answer at all."""
    short = dataclasses.replace(sampling, max_tokens=8)
    async with client_for(1) as client:
        record = await stream_chat(client, target, WARM_UP, short)
    return record.error
