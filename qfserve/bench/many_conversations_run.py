"""The many-conversations run: the same conversations played on each variant of the servers in
turn (one server at a time, each on the machine alone), restarting a server between two turns
where the variant asks for it."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from qfserve.bench import peers as peer_mod
from qfserve.bench.client import Sampling, Target
from qfserve.bench.many_conversations import Conversations, many
from qfserve.bench.many_conversations_report import cache_samples, goals
from qfserve.bench.memory import peak_rss
from qfserve.bench.report import machine, recorded_path
from qfserve.bench.runner import progress_bar, warm_up
from qfserve.bench.structured import openai_route
from qfserve.bench.workload import (
    DISK_TIER,
    LLAMA_SERVER_VARIANT,
    NO_TIER,
    RAM_TIER,
    Conversation,
    load_conversations,
)

QFSERVE = "qfserve"
# qfserve's settings, as environment variables of the server the bench starts.
N_PARALLEL_ENV = "QFSERVE_ENGINE__N_PARALLEL"
CACHE_RAM_MB_ENV = "QFSERVE_ENGINE__CACHE_RAM_MB"
CACHE_DIR_ENV = "QFSERVE_ENGINE__CACHE_DIR"


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    server: str  # QFSERVE or peer_mod.LLAMA_SERVER
    last_turn: int
    # qfserve's settings beyond the run's own (`QFSERVE_*` environment variables).
    settings: dict[str, str] = field(default_factory=dict)
    # The server restarts after this turn of every conversation, histories kept by the client.
    restart_after: int | None = None
    # Plays only the first this many conversations; None: all of them.
    conversations: int | None = None


def restart_turn(turns: int) -> int:
    """The restart variants restart after this turn: half-way through the conversations."""
    return max(1, turns // 2)


def no_tier_conversations(conversations: int, parallel: int) -> int:
    """Without a tier every returning turn prefills its whole history again, which would make
    this variant alone take longer than all the others: it plays half as many conversations
    again as there are slots. That is still enough for every returning turn to find its slot
    taken: the first request to start after a conversation's turn ends takes the slot it freed,
    the only free one while the other clients' requests run."""
    return min(conversations, parallel + max(1, parallel // 2))


def variants(
    turns: int, cache_dir: Path, with_llama_server: bool, conversations: int, parallel: int
) -> list[Variant]:
    """qfserve with its RAM tier at its default budget; with no tier at all (and a restart half-way,
    whose next turn is the restart's figure without a disk tier: with no tier, a restart loses
    nothing more); with a disk tier, up to the first turn after a restart half-way; and
    llama-server with its own cache defaults (its host-RAM prompt cache among them)."""
    k = restart_turn(turns)
    found = [
        Variant(RAM_TIER, "qfserve, RAM tier at its default budget", QFSERVE, turns),
        Variant(NO_TIER, "qfserve, no tier (RAM budget 0)", QFSERVE, turns,
                {CACHE_RAM_MB_ENV: "0"}, restart_after=k,
                conversations=no_tier_conversations(conversations, parallel)),
        Variant(DISK_TIER, "qfserve, disk tier (RAM tier at its default budget)", QFSERVE, k + 1,
                {CACHE_DIR_ENV: str(cache_dir)}, restart_after=k),
    ]  # fmt: skip
    if with_llama_server:
        label = f"{peer_mod.LLAMA_SERVER}, its default --cache-ram"
        found.append(Variant(LLAMA_SERVER_VARIANT, label, peer_mod.LLAMA_SERVER, turns))
    return found


@dataclass
class ManyOptions:
    model: Path
    threads: int
    n_ctx: int
    parallel: int
    conversations: int
    turns: int
    sampling: Sampling
    workload: Path
    llama_server: Path | None = None
    endpoint: str = "llama_2_7b"
    # Only these variants (keys), in the usual order; all when empty.
    only: tuple[str, ...] = ()


def qfserve_tier_defaults() -> dict[str, Any]:
    """The tier settings as this qfserve defines them; a setting it does not have yet is None."""
    from qfserve.config import EngineSettings

    engine = EngineSettings()
    found: dict[str, Any] = {}
    for name in ("cache_ram_mb", "cache_dir", "cache_disk_mb", "kv_type", "context_length"):
        value = getattr(engine, name, None)
        found[name] = value if value is None or isinstance(value, int | float | str) else str(value)
    return found


async def run_many(options: ManyOptions, console: Console) -> dict[str, Any]:
    if options.conversations <= options.parallel:
        raise ValueError(
            f"{options.conversations} conversations on {options.parallel} slots: a returning turn "
            "finds its slot taken only with more conversations than slots"
        )
    if options.turns < 2:
        raise ValueError("at least 2 turns: the second is the first returning one")
    base = load_conversations(options.workload / "conversations.json")
    conversations = many(base, options.conversations, options.turns)
    workdir = Path(tempfile.mkdtemp(prefix="qfserve-bench-conversations-"))
    (workdir / "disk-tier").mkdir()
    every = variants(
        options.turns,
        workdir / "disk-tier",
        options.llama_server is not None,
        options.conversations,
        options.parallel,
    )
    chosen = [v for v in every if not options.only or v.key in options.only]
    results: dict[str, Any] = {
        "schema": 1,
        "scenario": "many-conversations",
        "machine": machine(),
        "settings": {
            "model": recorded_path(options.model),
            "threads": options.threads,
            "n_ctx": options.n_ctx,
            "kv_pool_tokens": peer_mod.shared_pool(options.parallel, options.n_ctx),
            "parallel": options.parallel,
            "conversations": options.conversations,
            "turns": options.turns,
            "restart_after": restart_turn(options.turns),
            "answer_tokens": options.sampling.max_tokens,
            "temperature": options.sampling.temperature,
            "top_p": options.sampling.top_p,
            "top_k": options.sampling.top_k,
            "seed": options.sampling.seed,
            "languages": sorted({c.lang for c in conversations}),
            "qfserve_engine": qfserve_tier_defaults(),
        },
        "variants": [],
    }
    began = time.perf_counter()
    try:
        for variant in chosen:
            console.print(f"many conversations: {variant.label}")
            played = await _run_variant(variant, options, conversations, workdir, console)
            results["variants"].append(played)
    except BaseException:
        console.print(f"logs kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    results["wall_s"] = time.perf_counter() - began
    results["goals"] = goals(results)
    return results


async def _start(variant: Variant, options: ManyOptions, workdir: Path) -> peer_mod.Peer:
    if variant.server == peer_mod.LLAMA_SERVER:
        assert options.llama_server is not None
        return await peer_mod.start_llama_server(
            binary=options.llama_server, model=options.model, threads=options.threads,
            n_ctx=options.n_ctx, n_parallel=options.parallel, workdir=workdir,
            endpoint=options.endpoint,
        )  # fmt: skip
    settings = {N_PARALLEL_ENV: str(options.parallel), **variant.settings}
    return await peer_mod.start_qfserve(
        model=options.model, threads=options.threads, workdir=workdir,
        endpoint=options.endpoint, settings=settings,
    )  # fmt: skip


async def cache_metrics(base_url: str) -> dict[str, float]:
    """qfserve's prompt-token and prefix-cache samples on `GET /metrics` (name with labels:
    value); empty when it cannot be read."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(base_url.rstrip("/") + "/metrics")
    except httpx.HTTPError:
        return {}
    return cache_samples(response.text) if response.status_code == 200 else {}


def _target(peer: peer_mod.Peer) -> Target:
    """qfserve through its OpenAI route, as llama-server: one chunk per token on both, so the
    first token's time is measured, not estimated from a sentence segment."""
    return openai_route(peer.target)


async def _run_variant(
    variant: Variant,
    options: ManyOptions,
    conversations: list[Conversation],
    workdir: Path,
    console: Console,
) -> dict[str, Any]:
    folder = workdir / variant.key
    folder.mkdir(parents=True, exist_ok=True)
    played = conversations[: variant.conversations]
    state = Conversations(played)
    phases = (
        [(1, variant.last_turn)]
        if variant.restart_after is None
        else [(1, variant.restart_after), (variant.restart_after + 1, variant.last_turn)]
    )
    records: list[dict[str, Any]] = []
    peaks: list[int] = []
    # Per phase (a restart starts the server's counters again): its cache metrics at the end.
    metrics: list[dict[str, float]] = []
    restart_s: float | None = None
    began = time.perf_counter()
    peer = await _start(variant, options, folder)
    try:
        with progress_bar(console) as progress:
            task = progress.add_task(variant.label, total=len(played) * variant.last_turn)
            for number, (first, last) in enumerate(phases):
                if number > 0:
                    console.print(f"restarting {peer.name} after turn {first - 1}")
                    stopping = time.perf_counter()
                    peer = await peer_mod.restart_qfserve(peer)
                    restart_s = time.perf_counter() - stopping
                target = _target(peer)
                error = await warm_up(target, options.sampling)
                if error is not None:
                    raise RuntimeError(f"{variant.label} cannot answer: {error}")
                async with peak_rss(target.pid) as peak:
                    records += await state.play(
                        target, first_turn=first, last_turn=last, parallel=options.parallel,
                        sampling=options.sampling,
                        first_after_restart=first if number > 0 else None,
                        on_turn=lambda: progress.advance(task),
                    )  # fmt: skip
                if peak.bytes is not None:
                    peaks.append(peak.bytes)
                if variant.server == QFSERVE:
                    metrics.append(await cache_metrics(peer.target.base_url))
    finally:
        peer.stop()
    return {
        "variant": variant.key,
        "label": variant.label,
        "server": variant.server,
        "settings": variant.settings,
        "restart_after": variant.restart_after,
        "last_turn": variant.last_turn,
        "conversations": len(played),
        "wall_s": time.perf_counter() - began,
        "peak_rss_bytes": max(peaks) if peaks else None,
        "restart_s": restart_s,
        "metrics": metrics,
        "turns": records,
    }
