"""What the gateway adds: time to first token of an upstream, directly and through qfserve.

llama-cpp-python's OpenAI server is the upstream; qfserve serves it as a remote endpoint. Both
are asked the same questions on the same OpenAI route (streaming), one at a time, alternating
which goes first, so the two series see the same machine. The issue's target: qfserve adds under
2 ms to the median time to first token.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from qfserve.bench.client import Dialect, Sampling, Target, stream_chat
from qfserve.bench.peers import start_llama_cpp_server, start_qfserve
from qfserve.bench.report import machine
from qfserve.bench.stats import distribution
from qfserve.bench.workload import default_dir, load_prompts, request_messages

TARGET_MS = 2.0
DIRECT_TAG, VIA_TAG = "a", "b"


async def run_gateway(
    *, model: Path, threads: int, requests: int, sampling: Sampling, console: Console
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qfserve-gateway-") as folder:
        workdir = Path(folder)
        upstream = await start_llama_cpp_server(
            model=model, threads=threads, n_ctx=2048, workdir=workdir
        )
        try:
            config = workdir / "gateway.toml"
            config.write_text(
                '[[endpoints]]\nname = "llama_2_7b"\nengine = "remote"\n'
                f'model = "llama_2_7b"\nupstreams = ["{upstream.target.base_url}"]\n'
                "context_length = 2048\n"
            )
            gateway = await start_qfserve(
                model=None, threads=threads, workdir=workdir / "gateway", config=config
            )
            try:
                via = Target(
                    "qfserve -> llama_cpp.server",
                    Dialect.OPENAI,
                    gateway.target.base_url + "/v1",
                    api_key=gateway.target.access_token,
                )
                return await _measure(upstream.target, via, requests, sampling, console)
            finally:
                gateway.stop()
        finally:
            upstream.stop()


async def _measure(
    direct: Target, via: Target, requests: int, sampling: Sampling, console: Console
) -> dict[str, Any]:
    prompts = load_prompts(default_dir() / "prompts.json")
    ttft: dict[str, list[float]] = {direct.name: [], via.name: []}
    paired: list[float] = []  # via minus direct, for the same question
    errors: list[str] = []
    async with httpx.AsyncClient() as client:
        for target in (direct, via):  # warm up both: first requests pay for lazy set-up
            await stream_chat(client, target, request_messages(prompts, 0, "warm"), sampling)
        for index in range(requests):
            order = (direct, via) if index % 2 == 0 else (via, direct)
            # The same question to both, tagged differently so that neither is answered from the
            # prompt cache the other just filled. The tags must cost the same prefill: equal
            # characters are not enough ("[direct3]" is 3 tokens fewer than "[via-qf3]" for
            # SmolLM2, which once passed for 12 ms of gateway overhead); one letter each is.
            pair: dict[str, float] = {}
            for target in order:
                tag = DIRECT_TAG if target is direct else VIA_TAG
                messages = request_messages(prompts, index, tag)
                record = await stream_chat(client, target, messages, sampling)
                if record.ttft_s is None:
                    errors.append(record.error or "no first token")
                else:
                    pair[target.name] = record.ttft_s * 1000
                    ttft[target.name].append(pair[target.name])
            if len(pair) == 2:
                paired.append(pair[via.name] - pair[direct.name])
            console.print(f"gateway: {index + 1}/{requests}", end="\r")
    direct_ms, via_ms = distribution(ttft[direct.name]), distribution(ttft[via.name])
    # The median of per-question differences: prompts differ in length, so the difference of the
    # two medians mixes prefill time into what should be the gateway's own cost.
    added = distribution(paired)["p50"]
    return {
        "machine": machine(),
        "requests": requests,
        "max_tokens": sampling.max_tokens,
        "ttft_ms": {direct.name: direct_ms, via.name: via_ms},
        "added_ms_p50": added,
        "paired_differences_ms": distribution(paired),
        "target_ms": TARGET_MS,
        "met": added is not None and added < TARGET_MS,
        "errors": errors,
    }


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [
        f"| {name} | {d['n']} | {d['p50']:.1f} | {d['p95']:.1f} | {d['p99']:.1f} |"
        for name, d in results["ttft_ms"].items()
    ]
    added = results["added_ms_p50"]
    verdict = "met" if results["met"] else "not met"
    return "\n".join(
        [
            "# Gateway overhead: time to first token, upstream directly vs through qfserve",
            "",
            f"- date: {m['date']}; machine: {m['cpu']}, {m['logical_cores']} cores, "
            f"{m['ram_bytes'] / 2**30:.0f} GiB, load at start {m['load_average_at_start']}; "
            f"llama-cpp-python {m['llama_cpp_python']}, qfserve commit {m['git_commit']}",
            f"- {results['requests']} streaming requests to each, one at a time, alternating; "
            f"max_tokens {results['max_tokens']}; OpenAI route on both sides",
            "- command: `qfserve bench --gateway --output bench/GATEWAY.md`",
            "",
            "| path | requests | TTFT ms p50 | p95 | p99 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"**qfserve adds {added:.2f} ms at the median of per-question differences** "
            f"(target: under {results['target_ms']:.0f} ms: {verdict}).",
            "",
            "```json",
            json.dumps(results, indent=1, default=str)[:4000],
            "```",
            "",
        ]
    )
