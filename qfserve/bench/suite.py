"""One bench run: start what must be started, measure every target the same way, report."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from qfserve.bench import peers as peer_mod
from qfserve.bench.baseline import NAME, run_baseline
from qfserve.bench.client import Dialect, Sampling, Target
from qfserve.bench.report import machine, recorded_path, targets
from qfserve.bench.runner import progress_bar, run_load, warm_up
from qfserve.bench.scenarios import run_conversations, run_disconnect
from qfserve.bench.stats import RunResult, merge, summarize
from qfserve.bench.structured import run_structured
from qfserve.bench.workload import (
    SCENARIOS,
    Prompt,
    StructuredWorkload,
    default_dir,
    load_conversations,
    load_prompts,
    load_structured,
)


@dataclass
class BenchOptions:
    url: str | None = None
    access_token: str | None = None
    ak: str | None = None
    sk: str | None = None
    openai_url: str | None = None
    openai_key: str | None = None
    endpoint: str = "llama_2_7b"
    concurrency: list[int] = field(default_factory=lambda: [1, 8])
    requests: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    rounds: int = 2
    scenarios: tuple[str, ...] = SCENARIOS
    conversations: int | None = None
    disconnect_clients: int = 16
    standard: bool = False
    compare: bool = False
    model: Path | None = None
    threads: int = 0
    n_ctx: int = 0
    pid: int | None = None
    workload: Path | None = None
    llama_server: Path | None = None
    n_parallel: int = 8

    def requests_for(self, concurrency: int) -> int:
        """Per round. By default at least 16 answers and 4 per concurrent stream in all, so that
        the ramp-up and the tail of a run weigh little against its steady state."""
        total = self.requests or max(16, 4 * concurrency)
        return max(1, math.ceil(total / self.rounds))


def _model_path(options: BenchOptions) -> Path:
    if options.model is not None:
        return options.model
    # The file qfserve's own defaults serve (the bundled model, requantized as
    # `engine.model_quant` asks), so that every server measured runs the same weights.
    from qfserve.config import EngineSettings
    from qfserve.engines.registry import default_model_path

    return default_model_path(EngineSettings())


def _settings(options: BenchOptions, model: Path | None) -> dict[str, Any]:
    s = options.sampling
    return {
        "model": recorded_path(model) if model else None,
        "threads": options.threads,
        "n_ctx": options.n_ctx,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "seed": s.seed,
        "rounds": options.rounds,
        "concurrency": options.concurrency,
        "requests_per_round": {str(c): options.requests_for(c) for c in options.concurrency},
        "scenarios": list(options.scenarios),
    }


async def run_suite(options: BenchOptions, console: Console) -> dict[str, Any]:
    needs_model = (
        options.standard
        or options.compare
        or options.model is not None
        or options.llama_server is not None
    )
    model = _model_path(options) if needs_model else None
    started: list[peer_mod.Peer] = []
    # The servers' and the baseline's logs: removed after a good run, kept after a failed one.
    workdir = Path(tempfile.mkdtemp(prefix="qfserve-bench-"))
    try:
        results = await _measure(options, model, workdir, started, console)
    except BaseException:
        console.print(f"logs kept in {workdir}")
        raise
    finally:
        for peer in reversed(started):
            peer.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    results["targets"] = targets(results)
    return results


async def _measure(
    options: BenchOptions,
    model: Path | None,
    workdir: Path,
    started: list[peer_mod.Peer],
    console: Console,
) -> dict[str, Any]:
    folder = options.workload or default_dir()
    prompts = load_prompts(folder / "prompts.json")
    conversations = load_conversations(folder / "conversations.json")[: options.conversations]
    structured = (
        load_structured(folder / "structured.json") if "structured" in options.scenarios else None
    )
    measured = await _start_targets(options, model, workdir, started, console)
    results: dict[str, Any] = {
        "schema": 1,
        "machine": machine(),
        "settings": _settings(options, model),
        "peers": [{"name": t.name, "dialect": t.dialect.value, "url": t.base_url}
                  for t in measured],
    }  # fmt: skip
    for target in measured:
        error = await warm_up(target, options.sampling)
        if error is not None:
            raise RuntimeError(f"{target.name} cannot answer: {error}")
    with progress_bar(console) as progress:
        await _load_and_baseline(options, measured, prompts, model, workdir, progress, results)
        if "conversation" in options.scenarios:
            results["conversations"] = [
                played
                for target in measured
                for played in await run_conversations(target, conversations, options.sampling)
            ]
        if structured is not None:
            results["structured"] = await _structured(options, measured, structured, progress)
    qianfan = [t for t in measured if t.dialect is Dialect.QIANFAN]
    if "disconnect" in options.scenarios and qianfan:
        console.print(f"disconnect: {options.disconnect_clients} clients at once")
        results["disconnect"] = await run_disconnect(
            qianfan[0], prompts, options.sampling, options.disconnect_clients
        )
    return results


async def _structured(
    options: BenchOptions,
    measured: list[Target],
    workload: StructuredWorkload,
    progress: Progress,
) -> dict[str, Any]:
    """qfserve's (the first Qianfan target's) structured output, at the run's levels."""
    qfserve = next((t for t in measured if t.dialect is Dialect.QIANFAN), None)
    if qfserve is None:
        note = "not measured: no qfserve among the targets (--standard or --url)"
        return {"peer": "qfserve", "available": False, "note": note}
    return await run_structured(
        qfserve, workload, levels=options.concurrency, requests_for=options.requests_for,
        sampling=options.sampling, rounds=options.rounds, progress=progress,
    )  # fmt: skip


async def _start_targets(
    options: BenchOptions,
    model: Path | None,
    workdir: Path,
    started: list[peer_mod.Peer],
    console: Console,
) -> list[Target]:
    """qfserve first, then the server it is compared with, then any other OpenAI URL."""
    found: list[Target] = []
    if options.standard:
        console.print(f"starting qfserve on {model} with {options.threads} threads")
        started.append(
            await peer_mod.start_qfserve(
                model=options.model, threads=options.threads, workdir=workdir,
                endpoint=options.endpoint,
            )
        )  # fmt: skip
        found.append(started[-1].target)
    elif options.url:
        token = options.access_token
        if token is None and options.ak and options.sk:
            token = await peer_mod.fetch_access_token(options.url, options.ak, options.sk)
        found.append(
            Target(
                "qfserve", Dialect.QIANFAN, options.url, options.endpoint, token, pid=options.pid
            )
        )
    if options.compare and model is not None:
        console.print(f"starting {peer_mod.LLAMA_CPP_SERVER} on the same model and threads")
        started.append(
            await peer_mod.start_llama_cpp_server(
                model=model, threads=options.threads, n_ctx=options.n_ctx, workdir=workdir,
                endpoint=options.endpoint,
            )
        )  # fmt: skip
        found.append(started[-1].target)
    if options.llama_server is not None and model is not None:
        console.print(f"starting {peer_mod.LLAMA_SERVER} with {options.n_parallel} slots")
        started.append(
            await peer_mod.start_llama_server(
                binary=options.llama_server, model=model, threads=options.threads,
                n_ctx=options.n_ctx, n_parallel=options.n_parallel, workdir=workdir,
                endpoint=options.endpoint,
            )
        )  # fmt: skip
        found.append(started[-1].target)
    if options.openai_url:
        pid = options.pid if not found else None
        found.append(
            Target("openai", Dialect.OPENAI, options.openai_url, options.endpoint,
                   api_key=options.openai_key, pid=pid)
        )  # fmt: skip
    return found


async def _load_and_baseline(
    options: BenchOptions,
    measured: list[Target],
    prompts: Sequence[Prompt],
    model: Path | None,
    workdir: Path,
    progress: Progress,
    results: dict[str, Any],
) -> None:
    """Rounds of every concurrency level; within a level the targets take turns, in reverse
    order every other round, so that a noisy neighbour or a warming CPU falls on all alike. The
    baseline takes its turn at concurrency 1."""
    runs: dict[tuple[str, int], list[RunResult]] = {}
    baseline_runs: list[RunResult] = []
    with_baseline = "baseline" in options.scenarios and model is not None
    # The baseline's turn: concurrency 1, or the first level if 1 is not asked for.
    baseline_level = 1 if 1 in options.concurrency else options.concurrency[0]
    for round_number in range(1, options.rounds + 1):
        for level in options.concurrency:
            # None stands for the baseline among the targets.
            turns: list[Target | None] = list(measured) if "load" in options.scenarios else []
            if with_baseline and level == baseline_level:
                turns.append(None)
            if round_number % 2 == 0:
                turns.reverse()
            tag = f"{round_number}.{level}."
            for target in turns:
                if target is None:
                    assert model is not None
                    baseline_runs.append(
                        await run_baseline(
                            model=model, threads=options.threads, n_ctx=options.n_ctx,
                            prompts=prompts, requests=options.requests_for(1),
                            sampling=options.sampling, progress=progress,
                            log=workdir / "baseline.log", label=f"round {round_number}: {NAME}",
                        tag=tag,
                        )
                    )  # fmt: skip
                    continue
                run = await run_load(
                    target, prompts, requests=options.requests_for(level), concurrency=level,
                    sampling=options.sampling, progress=progress,
                    label=f"round {round_number}: {target.name} at concurrency {level}", tag=tag,
                )  # fmt: skip
                runs.setdefault((target.name, level), []).append(run)
    results["load"] = [
        summarize(merge(runs[(t.name, level)]))
        for level in options.concurrency
        for t in measured
        if (t.name, level) in runs
    ]
    results["baseline"] = summarize(merge(baseline_runs)) if baseline_runs else None
