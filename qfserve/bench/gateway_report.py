"""The gateway bench's results as a markdown page, with every figure as JSON beside it. Pure but
for `write`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qfserve.bench.gateway import DIALECT_LABELS

# The results' sections, in the report's order, and what each tells.
SECTIONS = {
    "model_upstream": (
        "the model",
        "llama_cpp.server on the bundled model, answering from its prompt cache: a real model "
        "behind the gateway",
    ),
    "instant_upstream": (
        "instant",
        "an upstream that answers at once: the gateway's own cost, with nothing to bury it",
    ),
    "pausing_upstream": (
        "pausing",
        "the same upstream pausing before its first token without using the CPU: what waiting "
        "costs one more hop",
    ),
}


def _ms(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _section_name(key: str, results: dict[str, Any]) -> str:
    name = SECTIONS[key][0]
    if key == "pausing_upstream":
        return f"{name} {results['pause_seconds'] * 1000:.0f} ms"
    return name


def overhead_rows(results: dict[str, Any]) -> list[str]:
    """One row per section and dialect: pairs measured, the median added, the spread, met."""
    target = results["target_ms"]
    rows = [
        "| upstream | dialect | pairs | errors | first text held back "
        f"| qfserve adds, ms (median of pairs) | p5 | p95 | under {target:g} ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in SECTIONS:
        section = results.get(key)
        if section is None:
            continue
        for dialect, part in section["dialects"].items():
            low, high = part["paired_spread_ms"]
            added = part["added_ms_p50"]
            verdict = "n/a" if added is None else ("met" if part["met"] else "**not met**")
            rows.append(
                f"| {_section_name(key, results)} | {DIALECT_LABELS.get(dialect, dialect)} "
                f"| {part['paired_differences_ms']['n']} | {part['errors']} | {part['held_back']} "
                f"| {_ms(added, 2)} | {_ms(low)} | {_ms(high)} | {verdict} |"
            )
    return rows


def ttft_rows(results: dict[str, Any]) -> list[str]:
    """Time to first token of each path: the upstream directly (once per dialect, as it was
    paired with it) and through qfserve in each dialect."""
    rows = [
        "| upstream | dialect | path | requests | TTFT ms p50 | p95 | p99 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for key in SECTIONS:
        section = results.get(key)
        if section is None:
            continue
        for dialect, part in section["dialects"].items():
            for path, d in part["ttft_ms"].items():
                rows.append(
                    f"| {_section_name(key, results)} | {DIALECT_LABELS.get(dialect, dialect)} "
                    f"| {path} | {d['n']} | {_ms(d['p50'])} | {_ms(d['p95'])} | {_ms(d['p99'])} |"
                )
    return rows


def _failures(results: dict[str, Any]) -> list[str]:
    lines = []
    for key in SECTIONS:
        for dialect, part in (results.get(key) or {}).get("dialects", {}).items():
            if part["first_errors"]:
                lines.append(f"- {_section_name(key, results)}, {dialect}: {part['first_errors']}")
    return ["", "Errors (their pairs are left out):", "", *lines] if lines else []


def report(results: dict[str, Any], *, command: str = "", json_name: str = "") -> str:
    m = results["machine"]
    stream = results["v1_stream"]
    v1_settings = ", ".join(f"`stream.{name} = {value}`" for name, value in stream.items())
    sections = [
        f"  - {_section_name(key, results)}: {SECTIONS[key][1]}"
        for key in SECTIONS
        if key in results
    ]
    return "\n".join(
        [
            "# Gateway overhead: time to first token, upstream directly vs through qfserve",
            "",
            f"- date: {m['date']}; machine: {m['cpu']}, {m['logical_cores']} cores, "
            f"{m['ram_bytes'] / 2**30:.0f} GiB, load at start {m['load_average_at_start']}; "
            f"llama-cpp-python {m['llama_cpp_python']}, qfserve commit {m['git_commit']}",
            "- each pair: the upstream asked directly on its OpenAI route, and through qfserve in "
            "one dialect; streaming, one request at a time, alternating which path goes first; "
            "the dialects take turns pair by pair. Every request asks "
            f'"{results["question"]}" (the model answers from its prompt cache); '
            f"llama_cpp.server on {results['upstream_threads']} thread; max_tokens "
            f"{results['max_tokens']}; upstreams, qfserve and this client share the machine's "
            "cores",
            "- time to first token: the first event carrying answer text. qfserve's V1 stream "
            f"is set to send every token as its own event ({v1_settings}), so that its first "
            'event is its first token, not its first sentence. "First text held back": pairs '
            "whose first event through qfserve carried more than the upstream's first token "
            "(the safety guard holds text back while a listed term could still complete); "
            "they measure the answer, not the gateway",
            "- upstreams:",
            *sections,
            *([f"- command: `{command}`"] if command else []),
            "",
            f"## What qfserve adds to time to first token (target: under "
            f"{results['target_ms']:g} ms in every dialect)",
            "",
            *overhead_rows(results),
            *_failures(results),
            "",
            "## Time to first token by path",
            "",
            *ttft_rows(results),
            "",
            *([f"Every figure: `{json_name}`.", ""] if json_name else []),
        ]
    )


def write(results: dict[str, Any], output: Path, command: str = "") -> str:
    """The report to `output` and every figure as JSON beside it; the report's text."""
    beside = output.with_suffix(".json")
    text = report(results, command=command, json_name=beside.name)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    dumped = json.dumps(results, ensure_ascii=False, indent=1, default=str)
    beside.write_text(dumped + "\n", encoding="utf-8")
    return text
