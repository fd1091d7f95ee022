"""The structured-output scenario's figures: each case's summary, its targets, and its section of
the report. Pure."""

from __future__ import annotations

import json
from typing import Any

from qfserve.bench.stats import FullBatch, RunResult, per_stream_tokens_per_s, ratio, summarize

# The cases, in the report's order: every stream free, every stream with the schema, then half
# of each side by side (at the highest concurrency level only).
FREE = "free"
SCHEMA = "schema"
MIXED_FREE = "mixed_free"
MIXED_SCHEMA = "mixed_schema"
CASES = (FREE, SCHEMA, MIXED_FREE, MIXED_SCHEMA)
CASE_LABELS = {
    FREE: "free",
    SCHEMA: "JSON schema",
    MIXED_FREE: "mixed: the free half",
    MIXED_SCHEMA: "mixed: the schema half",
}
# Constrained decoding may cost at most 15% of throughput; free sequences batched beside
# constrained ones may lose at most 5%.
CONSTRAINED_GOAL = 0.85
BESIDE_GOAL = 0.95
# The concurrency the many-stream targets are about, when measured.
MANY = 8
# A stream's tokens/s while every stream of its run was decoding (stats.FullBatch).
FULL_BATCH = "full_batch_tokens_per_s"


def json_object_so_far(text: str, finish: str | None) -> bool:
    """A finished answer is one JSON object; one cut at max tokens at least starts as one."""
    stripped = text.strip()
    if finish != "stop":
        return stripped.startswith("{")
    try:
        return isinstance(json.loads(stripped), dict)
    except ValueError:
        return False


def case_summary(
    case: str, streams: int, run: RunResult, full: FullBatch | None = None
) -> dict[str, Any]:
    """`summarize`'s figures of one case's requests (`concurrency` is the whole run's, `streams`
    this case's share of it), with what comparing cases needs; `full`, its share of the time
    every stream of its runs was decoding."""
    ok = [r for r in run.records if r.ok]
    summary = summarize(run)
    return {
        "case": case,
        "streams": streams,
        **summary,
        "per_stream_tokens_per_s": per_stream_tokens_per_s(ok),
        FULL_BATCH: full.tokens_per_s if full else None,
        "tokens_per_answer": summary["output_tokens"] / len(ok) if ok else None,
        "json_answers": sum(json_object_so_far(r.text, r.finish) for r in ok),
    }


def _case(structured: dict[str, Any], case: str, level: int | None) -> dict[str, Any] | None:
    return next(
        (c for c in structured.get("cases", []) if c["case"] == case and c["concurrency"] == level),
        None,
    )


def _get(summary: dict[str, Any] | None, key: str) -> float | None:
    return summary[key] if summary else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _target(key: str, what: str, value: float | None, goal: float, detail: str) -> dict[str, Any]:
    met = None if value is None else value >= goal
    return {"id": key, "what": what, "value": value, "goal": f">= {goal:.2f}", "met": met,
            "detail": detail}  # fmt: skip


def levels(structured: dict[str, Any]) -> tuple[int | None, int | None]:
    """The concurrency level of the many-stream comparison (8 if asked, else the highest above
    1), and that of the mixed run; from the cases measured when the levels asked are not known."""
    cases = structured.get("cases", [])
    asked = structured.get("levels") or {c["concurrency"] for c in cases if c["case"] == FREE}
    high = MANY if MANY in asked else max((c for c in asked if c > 1), default=None)
    mixed = structured.get("mixed_level") or next(
        (c["concurrency"] for c in cases if c["case"] == MIXED_FREE), None
    )
    return high, mixed


def structured_targets(structured: dict[str, Any]) -> list[dict[str, Any]]:
    """s1 and s2: output tokens/s with the schema over free, at concurrency 1 and at the highest
    level; s3: in the mixed run, the free streams' tokens/s per stream while every stream was
    decoding, over those of the run where every stream was free. `met` is None when not
    measured."""
    high, mixed = levels(structured)
    note = None if structured.get("available") else structured.get("note") or "not measured"
    found: list[dict[str, Any]] = []
    for key, level in (("s1", 1), ("s2", high)):
        free = _get(_case(structured, FREE, level), "output_tokens_per_s")
        schema = _get(_case(structured, SCHEMA, level), "output_tokens_per_s")
        found.append(_target(
            key, f"structured output, concurrency {level or 'n/a'}: tokens/s with a JSON schema "
            "vs free", ratio(schema, free), CONSTRAINED_GOAL,
            note or f"{_fmt(schema)} vs {_fmt(free)} tokens/s",
        ))  # fmt: skip
    alone = _get(_case(structured, FREE, mixed), FULL_BATCH)
    beside = _get(_case(structured, MIXED_FREE, mixed), FULL_BATCH)
    found.append(_target(
        "s3", f"concurrency {mixed or 'n/a'}, half the streams with a schema: the free streams' "
        "tokens/s vs every stream free", ratio(beside, alone), BESIDE_GOAL,
        note or f"{_fmt(beside)} vs {_fmt(alone)} tokens/s per stream, every stream decoding",
    ))  # fmt: skip
    return found


def _ms(dist: dict[str, Any]) -> str:
    parts = [dist.get(k) for k in ("p50", "p95", "p99")]
    return " / ".join("-" if v is None else f"{v * 1000:.0f}" for v in parts)


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _versus_free(structured: dict[str, Any], case: dict[str, Any]) -> float | None:
    """A whole run with the schema against the free run at its level, by output tokens/s; a
    mixed half against the free run at its level, by tokens/s per stream while every stream
    was decoding."""
    free = _case(structured, FREE, case["concurrency"])
    if case["case"] == SCHEMA:
        return ratio(case["output_tokens_per_s"], _get(free, "output_tokens_per_s"))
    if case["case"] in (MIXED_FREE, MIXED_SCHEMA):
        return ratio(case.get(FULL_BATCH), _get(free, FULL_BATCH))
    return None


def structured_lines(structured: dict[str, Any] | None) -> list[str]:
    """The report's section: one row per case and concurrency level."""
    if not structured:
        return []
    head = ["", "## Structured output: a JSON schema vs free text", ""]
    if not structured.get("available"):
        return [*head, f"{structured.get('peer')}: {structured.get('note')}"]
    lines = [
        *head,
        f"{structured['peer']}'s `{structured['route']}`: {structured['prompts']} prompts asking "
        f"for a `{structured['schema_name']}` object, each asked free and with the schema as "
        "`response_format` json_schema (strict); in the mixed run, half the streams free and "
        "half with the schema, side by side. Tokens/s per stream: a stream's answered tokens "
        "over the time its requests took; while all decode: the same, counted only while every "
        "stream of the run was between its first token and its last, so that runs are compared "
        "at the same batch size (streams whose answers end early leave a smaller, faster batch "
        'behind). "vs free": with the schema, output tokens/s against the free run at the same '
        "concurrency; a mixed half, its tokens/s per stream while all decode against the free "
        "run's. JSON answers: finished answers that are one JSON object, and answers cut at max "
        "tokens that start as one.",
        "",
        "| case | concurrency | streams | requests | errors | output tokens/s | tokens/s per "
        "stream | while all decode | vs free | tokens per answer | JSON answers | TTFT ms p50 / "
        "p95 / p99 | inter-token ms p50 / p95 / p99 | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for c in structured.get("cases", []):
        ok = c["requests"] - c["errors"]
        lines.append(
            f"| {CASE_LABELS.get(c['case'], c['case'])} | {c['concurrency']} | {c['streams']} "
            f"| {c['requests']} | {c['errors']} | {_fmt(c['output_tokens_per_s'])} "
            f"| {_fmt(c['per_stream_tokens_per_s'])} | {_fmt(c.get(FULL_BATCH))} "
            f"| {_fmt(_versus_free(structured, c), 2)} "
            f"| {_fmt(c['tokens_per_answer'])} | {c['json_answers']} / {ok} "
            f"| {_ms(c['ttft_s'])} | {_ms(c['itl_s'])} | {_mb(c['peak_rss_bytes'])} |"
        )
    return lines
