"""Structured output's cost: the same prompts asked free and with a JSON schema as
`response_format`, at each concurrency level, then free and constrained streams side by side,
through qfserve's OpenAI route."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.progress import Progress

from qfserve.bench.client import Dialect, Sampling, Target
from qfserve.bench.runner import Lane, run_lanes, warm_up
from qfserve.bench.stats import FullBatch, RunResult, full_batch, merge
from qfserve.bench.structured_report import (
    CASES,
    FREE,
    MANY,
    MIXED_FREE,
    MIXED_SCHEMA,
    SCHEMA,
    case_summary,
)
from qfserve.bench.workload import StructuredWorkload

OPENAI_ROUTE = "/v1/chat/completions"


def openai_route(target: Target) -> Target:
    """The same qfserve through its OpenAI route, the access token as the Bearer key (every
    route accepts it); the process and so its memory are the same."""
    if target.dialect is Dialect.OPENAI:
        return target
    base = target.base_url.rstrip("/")
    return dataclasses.replace(
        target, dialect=Dialect.OPENAI, base_url=base + "/v1", api_key=target.access_token
    )


def mixed_level(levels: Sequence[int]) -> int | None:
    """The mixed run's concurrency: 8 (the targets' level) if measured, else the highest level
    that can be split in two."""
    if MANY in levels:
        return MANY
    return max((level for level in levels if level > 1), default=None)


def plan(
    level: int,
    requests: int,
    round_number: int,
    response_format: Mapping[str, Any],
    *,
    mixed: bool,
) -> list[list[Lane]]:
    """The runs of one level in one round, each a list of lanes run at once: every stream free,
    every stream with the schema, and (if `mixed`) half of each, in reverse order every other
    round. Every run has `requests` in all and the same concurrency, and asks the same prompts:
    the mixed run's schema half takes up where its free half stops, so that the two runs differ
    only by the schema. Each lane has its own tag, so that no request shares more than the chat
    template's opening with another."""
    tag = f"s{round_number}.{level}."
    runs = [
        [Lane(FREE, level, requests, tag + "f.")],
        [Lane(SCHEMA, level, requests, tag + "s.", response_format)],
    ]
    if mixed and level > 1:
        constrained = level // 2
        free = level - constrained
        free_requests = max(1, requests * free // level)
        runs.append(
            [
                Lane(MIXED_FREE, free, free_requests, tag + "mf."),
                Lane(
                    MIXED_SCHEMA,
                    constrained,
                    max(1, requests - free_requests),
                    tag + "ms.",
                    response_format,
                    first=free_requests,
                ),
            ]
        )
    if round_number % 2 == 0:
        runs.reverse()
    return runs


async def run_structured(
    target: Target,
    workload: StructuredWorkload,
    *,
    levels: Sequence[int],
    requests_for: Callable[[int], int],
    sampling: Sampling,
    rounds: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every case at every level, `rounds` times, pooled per case and level. Not available (and
    nothing measured) when the server cannot answer in the schema: its error is the note."""
    route = openai_route(target)
    response_format = workload.response_format()
    result: dict[str, Any] = {
        "peer": target.name,
        "route": OPENAI_ROUTE,
        "schema_name": workload.name,
        "prompts": len(workload.prompts),
        "levels": list(levels),
        "mixed_level": mixed_level(levels),
        "available": False,
    }
    # Free, then constrained: the second also compiles the schema's grammar, once, unmeasured.
    for asked in (None, response_format):
        error = await warm_up(route, sampling, asked)
        if error is not None:
            result["note"] = f"not available: {error}"
            return result
    result["available"] = True
    mixed_at = result["mixed_level"]
    runs: dict[tuple[str, int], list[RunResult]] = {}
    streams: dict[tuple[str, int], int] = {}
    batches: dict[tuple[str, int], FullBatch] = {}
    for round_number in range(1, rounds + 1):
        for level in levels:
            for lanes in plan(
                level, requests_for(level), round_number, response_format, mixed=level == mixed_at
            ):
                cases = " + ".join(lane.name for lane in lanes)
                label = f"round {round_number}: {target.name} {cases} at concurrency {level}"
                done = await run_lanes(
                    route, workload.prompts, lanes, sampling=sampling, progress=progress,
                    label=label,
                )  # fmt: skip
                for lane in lanes:
                    runs.setdefault((lane.name, level), []).append(done[lane.name])
                    streams[(lane.name, level)] = lane.streams
                for name, share in full_batch(done, level).items():
                    batches.setdefault((name, level), FullBatch()).add(share)
    result["cases"] = [
        case_summary(
            case, streams[(case, level)], merge(runs[(case, level)]), batches.get((case, level))
        )
        for level in levels
        for case in CASES
        if (case, level) in runs
    ]
    return result
