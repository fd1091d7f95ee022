"""Paired A/B of qfserve source trees in front of one upstream: did a change move the gateway's
cost to time to first token, and its CPU per request?

`qfserve bench --gateway` measures one qfserve against the upstream directly. Between two of its
runs the machine's own speed drifts by 10-20% on a shared VM, more than most changes move the
figure. Here every tree runs at once, behind the same upstream, and each round sends one request
to the upstream directly and one through every tree, rotating the order, so all of them see the
same machine. A tree is a directory holding a `qfserve` package, such as a worktree:

    git worktree add /tmp/before HEAD~1
    .venv/bin/python scripts/gateway_ab.py /tmp/before . --upstream model --rounds 1500

Prints, per tree, the median of its per-round differences against the upstream directly and
its CPU per request (from /proc/<pid>/schedstat, to the nanosecond; everything the process did
over the rounds, an idle server's upkeep included, so compare trees with it, not runs), then
the paired median of each tree against the first. At 1,500 rounds in front of the model, a
difference under about 0.05 ms is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

import httpx

from qfserve.bench import peers
from qfserve.bench.client import Sampling, stream_chat
from qfserve.bench.gateway import (
    DIALECTS,
    PAUSE_SECONDS,
    QUESTION,
    UPSTREAM_THREADS,
    V1_STREAM,
    gateway_keys,
    remote_endpoint,
    stream_settings,
    through,
)
from qfserve.engines.registry import bundled_model_path


def cpu_ns(pid: int) -> int:
    """The process's CPU time so far, all threads: exact, unlike the tick-sampled /proc/pid/stat."""
    tasks = Path(f"/proc/{pid}/task")
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks.iterdir())


async def start_upstream(kind: str, workdir: Path) -> tuple[peers.Peer, str]:
    """The upstream and the model name to ask it for."""
    if kind == "model":
        model = bundled_model_path()
        server = await peers.start_llama_cpp_server(
            model=model, threads=UPSTREAM_THREADS, n_ctx=2048, workdir=workdir
        )
        return server, "llama_2_7b"
    delay = PAUSE_SECONDS if kind == "pausing" else 0.0
    return await peers.start_instant_upstream(workdir=workdir, first_token_delay=delay), "instant"


async def start_tree(tree: Path, index: int, config: Path, workdir: Path) -> peers.Peer:
    """qfserve from `tree`: the child imports the package from there first."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        return await peers.start_qfserve(
            model=None, threads=1, workdir=workdir / f"tree{index}", config=config
        )
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


async def main(trees: list[Path], upstream_kind: str, rounds: int, dialect: str) -> None:
    sampling = Sampling(max_tokens=4, temperature=0.1, top_p=0.9, top_k=40, seed=42)
    messages = [{"role": "user", "content": QUESTION}]
    with tempfile.TemporaryDirectory(prefix="gateway-ab-") as folder:
        workdir = Path(folder)
        upstream, model = await start_upstream(upstream_kind, workdir)
        config = workdir / "endpoints.toml"
        config.write_text(
            stream_settings(V1_STREAM) + remote_endpoint("ab", model, upstream.target.base_url)
        )
        gateways: list[peers.Peer] = []
        try:
            for index, tree in enumerate(trees):
                gateways.append(await start_tree(tree, index, config, workdir))
            vias = [
                through(gateway, str(tree), "ab", dialect=dialect, keys=await gateway_keys(gateway))
                for tree, gateway in zip(trees, gateways, strict=True)
            ]
            targets = [upstream.target, *vias]
            ttft: dict[str, list[float]] = {t.name: [] for t in targets}
            async with httpx.AsyncClient() as client:
                for target in targets:  # first requests pay for lazy set-up
                    for _ in range(5):
                        await stream_chat(client, target, messages, sampling)
                cpu_before = [cpu_ns(g.process.pid) for g in gateways]
                for n in range(rounds):
                    turn = n % len(targets)
                    order = targets[turn:] + targets[:turn]
                    for target in order[::-1] if n % 2 else order:
                        record = await stream_chat(client, target, messages, sampling)
                        if record.ttft_s is None:
                            raise RuntimeError(f"{target.name}: {record.error}")
                        ttft[target.name].append(record.ttft_s * 1000)
                cpu_after = [cpu_ns(g.process.pid) for g in gateways]
        finally:
            for gateway in gateways:
                gateway.stop()
            upstream.stop()
    direct = ttft[upstream.target.name]
    median = statistics.median(direct)
    print(f"{upstream.target.name}, {rounds} rounds: direct TTFT p50 {median:.2f} ms")
    for via, before, after in zip(vias, cpu_before, cpu_after, strict=True):
        added = statistics.median(a - d for a, d in zip(ttft[via.name], direct, strict=True))
        cpu_us = (after - before) / rounds / 1000
        print(
            f"{via.name}: adds {added:.3f} ms (median of paired differences), {cpu_us:.0f} us CPU"
        )
    first = ttft[vias[0].name]
    for via in vias[1:]:
        delta = statistics.median(b - a for a, b in zip(first, ttft[via.name], strict=True))
        print(f"{via.name} minus {vias[0].name}: {delta:+.3f} ms (median of paired differences)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="directories holding a qfserve package")
    parser.add_argument("--upstream", choices=("model", "instant", "pausing"), default="model")
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--dialect", choices=DIALECTS, default="openai")
    arguments = parser.parse_args()
    trees = [tree.resolve() for tree in arguments.trees]
    asyncio.run(main(trees, arguments.upstream, arguments.rounds, arguments.dialect))
