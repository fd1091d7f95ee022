"""What the gateway adds: time to first token of an upstream, directly and through qfserve.

Three upstreams, each a remote endpoint of one qfserve:
- llama-cpp-python's OpenAI server on the bundled model: what the target is about, a real model
  behind the gateway. Every request asks it the same question (`QUESTION`), so its prompt cache
  (llama-cpp-python keeps the last prompt's evaluated tokens) leaves only the prompt's last token
  to evaluate: a first token in about 20 ms, with a jitter of a few. A new question each time
  costs a prefill of about 200 ms on one thread of this machine, which varies by tens of ms from
  one request to the next even for the same question: the paired differences' p5-p95 spread was
  -39 to +61 ms in a run of 400 pairs that read 6.1 ms of gateway overhead (the run before read
  4.3). No affordable number of pairs makes that small next to 2 ms, and the gateway's own work
  does not depend on what the model computes. The model runs on one thread (`UPSTREAM_THREADS`),
  leaving a core to the gateway and the client, as a GPU server would leave the gateway's CPU
  alone;
- an upstream that answers at once (`instant_upstream`): the difference is then the gateway's
  own cost, with nothing to bury it;
- the same upstream pausing `PAUSE_SECONDS` before its first token, using no CPU meanwhile: a
  long prefill's wait without its jitter. qfserve then passes the first token on after sitting
  idle, with cold caches, which costs it more than back to back.

Each pair asks the same question on the same OpenAI route (streaming), one request at a time,
alternating which path goes first, so the two series of a pair see the same machine. The
target: qfserve adds under 2 ms to the median time to first token.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from qfserve.bench.client import Dialect, Sampling, Target, stream_chat
from qfserve.bench.peers import (
    Peer,
    start_instant_upstream,
    start_llama_cpp_server,
    start_qfserve,
)
from qfserve.bench.report import machine
from qfserve.bench.stats import distribution, percentile

TARGET_MS = 2.0
# Asked of every upstream by every request; the bundled model answers it from its prompt cache.
QUESTION = "What is the capital of France?"
UPSTREAM_THREADS = 1
# Pairs in front of the model and of the instant upstream per pair in front of the pausing one.
# The model's own jitter (paired differences spread over about 10 ms) needs them: at 400 pairs,
# two runs one commit apart read 2.17 and 2.58 ms, where the commit measured -0.05 ms in a
# paired A/B. The instant upstream's pairs take milliseconds.
FAST_FACTOR = 4
PAUSE_SECONDS = 0.1


async def run_gateway(
    *, model: Path, threads: int, requests: int, sampling: Sampling, console: Console
) -> dict[str, Any]:
    # Each server is stopped on the way out, in reverse order, whatever fails after it started.
    with tempfile.TemporaryDirectory(prefix="qfserve-gateway-") as folder, ExitStack() as stops:
        workdir = Path(folder)
        upstream = await start_llama_cpp_server(
            model=model, threads=UPSTREAM_THREADS, n_ctx=2048, workdir=workdir
        )
        stops.callback(upstream.stop)
        instant = await start_instant_upstream(workdir=workdir)
        stops.callback(instant.stop)
        pausing = await start_instant_upstream(workdir=workdir, first_token_delay=PAUSE_SECONDS)
        stops.callback(pausing.stop)
        config = workdir / "gateway.toml"
        config.write_text(
            remote_endpoint("llama_2_7b", "llama_2_7b", upstream.target.base_url)
            + remote_endpoint("instant", "instant", instant.target.base_url)
            + remote_endpoint("pausing", "instant", pausing.target.base_url)
        )
        gateway = await start_qfserve(
            model=None, threads=threads, workdir=workdir / "gateway", config=config
        )
        stops.callback(gateway.stop)
        via_model = through(gateway, "qfserve -> llama_cpp.server", "llama_2_7b")
        via_instant = through(gateway, "qfserve -> instant upstream", "instant")
        via_pausing = through(gateway, f"qfserve -> {pausing.target.name}", "pausing")
        real = await _pairs(upstream.target, via_model, requests * FAST_FACTOR, sampling, console)
        bare = await _pairs(instant.target, via_instant, requests * FAST_FACTOR, sampling, console)
        paused = await _pairs(pausing.target, via_pausing, requests, sampling, console)
    return {
        "machine": machine(),
        "max_tokens": sampling.max_tokens,
        "question": QUESTION,
        "upstream_threads": UPSTREAM_THREADS,
        "target_ms": TARGET_MS,
        "model_upstream": real,
        "instant_upstream": bare,
        "pause_seconds": PAUSE_SECONDS,
        "pausing_upstream": paused,
    }


def remote_endpoint(name: str, model: str, upstream_url: str) -> str:
    """A settings file's `[[endpoints]]` table for one remote endpoint on one upstream."""
    return (
        f'[[endpoints]]\nname = "{name}"\nengine = "remote"\nmodel = "{model}"\n'
        f'upstreams = ["{upstream_url}"]\ncontext_length = 2048\n\n'
    )


def through(gateway: Peer, name: str, endpoint: str) -> Target:
    """The streaming OpenAI route of `gateway` to `endpoint`, with the gateway's access token."""
    return Target(
        name, Dialect.OPENAI, gateway.target.base_url + "/v1", endpoint,
        api_key=gateway.target.access_token,
    )  # fmt: skip


def schedule(pairs: int) -> list[tuple[int, bool]]:
    """(pair index, direct?) for each request in order: both paths once per pair, alternating
    which goes first, so that neither always follows the other."""
    order: list[tuple[int, bool]] = []
    for index in range(pairs):
        direct_first = index % 2 == 0
        order += [(index, direct_first), (index, not direct_first)]
    return order


async def _pairs(
    direct: Target,
    via: Target,
    requests: int,
    sampling: Sampling,
    console: Console,
) -> dict[str, Any]:
    ttft: dict[str, list[float]] = {direct.name: [], via.name: []}
    paired: list[float] = []  # via minus direct, for the same question
    errors: list[str] = []
    messages = [{"role": "user", "content": QUESTION}]
    async with httpx.AsyncClient() as client:
        for target in (direct, via):  # warm up both: first requests pay for lazy set-up
            await stream_chat(client, target, messages, sampling)
        pair: dict[str, float] = {}
        for position, (index, is_direct) in enumerate(schedule(requests)):
            target = direct if is_direct else via
            record = await stream_chat(client, target, messages, sampling)
            if record.ttft_s is None:
                errors.append(record.error or "no first token")
            else:
                pair[target.name] = record.ttft_s * 1000
                ttft[target.name].append(pair[target.name])
            if position % 2 == 1:  # the pair's second request
                if len(pair) == 2:
                    paired.append(pair[via.name] - pair[direct.name])
                pair = {}
                console.print(f"gateway, {direct.name}: {index + 1}/{requests}", end="\r")
    # The median of per-pair differences: the difference of the two medians would mix in how the
    # machine's speed drifted over the run, which each pair sees on both paths alike.
    added = distribution(paired)["p50"]
    return {
        "requests": requests,
        "ttft_ms": {name: distribution(values) for name, values in ttft.items()},
        "added_ms_p50": added,
        "paired_differences_ms": distribution(paired),
        "paired_spread_ms": [percentile(paired, 5), percentile(paired, 95)],
        "met": added is not None and added < TARGET_MS,
        "errors": errors,
    }


def _section(title: str, part: dict[str, Any]) -> list[str]:
    rows = [
        f"| {name} | {d['n']} | {d['p50']:.1f} | {d['p95']:.1f} | {d['p99']:.1f} |"
        for name, d in part["ttft_ms"].items()
    ]
    added = part["added_ms_p50"]
    low, high = part["paired_spread_ms"]
    verdict = "met" if part["met"] else "not met"
    if added is None or low is None or high is None:
        return [f"## {title}", "", f"No pair measured: {part['errors'][:3]}", ""]
    return [
        f"## {title}",
        "",
        "| path | requests | TTFT ms p50 | p95 | p99 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"**qfserve adds {added:.2f} ms at the median of per-pair differences** "
        f"(target: under {TARGET_MS:.0f} ms: {verdict}); the differences' p5-p95 spread is "
        f"{low:.1f} to {high:.1f} ms.",
        "",
    ]


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    return "\n".join(
        [
            "# Gateway overhead: time to first token, upstream directly vs through qfserve",
            "",
            f"- date: {m['date']}; machine: {m['cpu']}, {m['logical_cores']} cores, "
            f"{m['ram_bytes'] / 2**30:.0f} GiB, load at start {m['load_average_at_start']}; "
            f"llama-cpp-python {m['llama_cpp_python']}, qfserve commit {m['git_commit']}",
            "- streaming requests, one at a time, the two paths alternating which goes first; "
            f"every request asks \"{results['question']}\" (the model answers from its prompt "
            f"cache); llama_cpp.server on {results['upstream_threads']} thread; "
            f"max_tokens {results['max_tokens']}; OpenAI route on both sides; upstreams, "
            "qfserve and this client share the machine's cores",
            "- command: `qfserve bench --gateway --output bench/GATEWAY.md`",
            "",
            *_section("In front of the model (llama_cpp.server, bundled model)",
                      results["model_upstream"]),
            *_section("In front of an upstream that answers at once: the gateway's own cost",
                      results["instant_upstream"]),
            *_section(f"In front of the same upstream pausing {results['pause_seconds'] * 1000:.0f}"
                      " ms before its first token: what waiting costs one more hop",
                      results["pausing_upstream"]),
            "```json",
            json.dumps(results, indent=1, default=str),
            "```",
            "",
        ]
    )  # fmt: skip
