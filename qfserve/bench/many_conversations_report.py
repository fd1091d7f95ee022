"""The many-conversations scenario's figures, goals and report page. Pure, but for `write`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qfserve.bench.many_conversations import AFTER_RESTART, FRESH, KINDS, RETURNING
from qfserve.bench.stats import distribution, ratio
from qfserve.bench.workload import DISK_TIER, LLAMA_SERVER_VARIANT, NO_TIER, RAM_TIER

# A returning turn's time to first token: at most 1.5 x a fresh turn's with the RAM tier, no
# more than llama-server's; after a restart, with the disk tier, at most 2 x a fresh turn's.
RETURNING_GOAL = 1.5
VS_LLAMA_SERVER_GOAL = 1.0
AFTER_RESTART_GOAL = 2.0


# qfserve's counters of prompt tokens, all of them and those served from a cache (slots or tiers),
# and its prefix-cache tier metrics: what `cache_samples` keeps of `GET /metrics`.
PROMPT_TOKENS = "qfserve_prompt_tokens_total"
CACHED_PROMPT_TOKENS = "qfserve_prompt_tokens_cached_total"
KEPT_METRICS = ("qfserve_prompt_tokens", "qfserve_prefix_cache")


def cache_samples(text: str) -> dict[str, float]:
    """The samples of Prometheus' text format whose names start with `KEPT_METRICS`, keyed by
    name and labels as written."""
    found: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith(KEPT_METRICS):
            continue
        key, _, value = line.rpartition(" ")
        if key.partition("{")[0].endswith("_created"):
            continue
        try:
            found[key] = float(value)
        except ValueError:
            continue
    return found


def metrics_cached_share(played: dict[str, Any]) -> float | None:
    """Prompt tokens served from a cache over all prompt tokens, by qfserve's own counters
    summed over the run's phases (warm-ups included); None without them."""
    prompt = cached = 0.0
    for phase in played.get("metrics") or []:
        prompt += sum(v for k, v in phase.items() if k.partition("{")[0] == PROMPT_TOKENS)
        cached += sum(v for k, v in phase.items() if k.partition("{")[0] == CACHED_PROMPT_TOKENS)
    return cached / prompt if prompt else None


def variant(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((v for v in results.get("variants", []) if v["variant"] == key), None)


def kind_summary(played: dict[str, Any], kind: str) -> dict[str, Any]:
    """Time to first token of one kind of turn (answered turns only), and how much of their
    prompts the server took from its cache, where it says."""
    turns = [t for t in played["turns"] if t["kind"] == kind]
    ok = [t for t in turns if t["error"] is None and t["ttft_s"] is not None]
    counted = [t for t in ok if t["cached_tokens"] is not None and t["prompt_tokens"]]
    prompt = sum(t["prompt_tokens"] for t in counted)
    return {
        "turns": len(turns),
        "errors": sum(t["error"] is not None for t in turns),
        "ttft_s": distribution([t["ttft_s"] for t in ok]),
        "prompt_tokens_mean": (sum(t["prompt_tokens"] or 0 for t in ok) / len(ok) if ok else None),
        "cached_share": (sum(t["cached_tokens"] for t in counted) / prompt) if prompt else None,
    }


def summaries(played: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: kind_summary(played, kind) for kind in KINDS}


def _p50(played: dict[str, Any] | None, kind: str) -> float | None:
    if played is None:
        return None
    value = kind_summary(played, kind)["ttft_s"]["p50"]
    return float(value) if value is not None else None


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _goal(key: str, what: str, value: float | None, goal: float, detail: str) -> dict[str, Any]:
    met = None if value is None else value <= goal
    return {"id": key, "what": what, "value": value, "goal": f"<= {goal:.1f}", "met": met,
            "detail": detail}  # fmt: skip


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's goals from one run's results; `met` is None when not measured."""
    ram, llama = variant(results, RAM_TIER), variant(results, LLAMA_SERVER_VARIANT)
    disk, none = variant(results, DISK_TIER), variant(results, NO_TIER)
    ram_back, ram_fresh = _p50(ram, RETURNING), _p50(ram, FRESH)
    llama_back = _p50(llama, RETURNING)
    disk_back, disk_fresh = _p50(disk, AFTER_RESTART), _p50(disk, FRESH)
    none_ratio = ratio(_p50(none, AFTER_RESTART), _p50(none, FRESH))
    return [
        _goal(
            "m1", "RAM tier: returning turns' TTFT p50 vs fresh turns'",
            ratio(ram_back, ram_fresh), RETURNING_GOAL,
            f"{_ms(ram_back)} vs {_ms(ram_fresh)} ms",
        ),
        _goal(
            "m2", "RAM tier: returning turns' TTFT p50 vs llama-server's",
            ratio(ram_back, llama_back), VS_LLAMA_SERVER_GOAL,
            f"{_ms(ram_back)} vs {_ms(llama_back)} ms"
            + ("" if llama else " (llama-server not measured: no --llama-server)"),
        ),
        _goal(
            "m3", "after a restart, disk tier: returning TTFT p50 vs fresh",
            ratio(disk_back, disk_fresh), AFTER_RESTART_GOAL,
            f"{_ms(disk_back)} vs {_ms(disk_fresh)} ms; without the tier "
            + ("not measured" if none_ratio is None else f"{none_ratio:.2f}x"),
        ),
    ]  # fmt: skip


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def _restart(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def _dist(summary: dict[str, Any]) -> str:
    d = summary["ttft_s"]
    if not d["n"]:
        return "-"
    return f"{_ms(d['p50'])} / {_ms(d['p95'])}"


def variant_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | conversations x turns | fresh TTFT ms p50 / p95 | returning p50 / p95 "
        "| returning / fresh "
        "| after restart p50 / p95 | after restart / fresh | prompt tokens cached: returning "
        "turns (usage) | all turns (/metrics) | errors | peak RSS MB | restart s | wall s |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for played in results.get("variants", []):
        s = summaries(played)
        fresh = s[FRESH]["ttft_s"]["p50"]
        back = s[RETURNING]["ttft_s"]["p50"]
        after = s[AFTER_RESTART]["ttft_s"]["p50"]
        errors = sum(k["errors"] for k in s.values())
        rss = played.get("peak_rss_bytes")
        lines.append(
            f"| {played['label']} | {played['conversations']} x {played['last_turn']} "
            f"| {_dist(s[FRESH])} | {_dist(s[RETURNING])} "
            f"| {_x(ratio(back, fresh))} | {_dist(s[AFTER_RESTART])} "
            f"| {'-' if after is None else _x(ratio(after, fresh))} "
            f"| {_share(s[RETURNING]['cached_share'])} | {_share(metrics_cached_share(played))} "
            f"| {errors} | {'-' if rss is None else f'{rss / 2**20:.0f}'} "
            f"| {_restart(played.get('restart_s'))} | {played['wall_s']:.0f} |"
        )
    return lines


def markdown(results: dict[str, Any], command: str = "") -> str:
    m, cfg = results["machine"], results["settings"]
    engine = cfg.get("qfserve_engine") or {}
    ram_mb = engine.get("cache_ram_mb")
    out = [
        "# qfserve bench: many conversations",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['logical_cores']} logical cores, "
        f"{m['ram_bytes'] / 2**30:.1f} GiB RAM, load average {m['load_average_at_start']} at "
        f"start), Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}, "
        f"qfserve {m['qfserve']} ({m['git_commit']}).",
        "",
        f"Model `{cfg['model']}`, {cfg['threads']} threads, {cfg['parallel']} slots of up to "
        f"{cfg['n_ctx']} tokens on every server{_pool(cfg)}. {cfg['conversations']} conversations "
        f"({', '.join(cfg['languages'])}) of {cfg['turns']} turns, played round-robin by "
        f"{cfg['parallel']} clients: turn 1 of every conversation, then turn 2 of every one, and "
        f"so on, so that a returning turn finds its slot taken by others. Every answer: at most "
        f"{cfg['answer_tokens']} tokens, temperature {cfg['temperature']}, seed {cfg['seed']}. "
        f"The restart variants restart the server after turn {cfg['restart_after']}. qfserve's "
        f"RAM tier budget by default: "
        + (f"{ram_mb} MB." if ram_mb is not None else "none (no `engine.cache_ram_mb` setting).")
        + f" The whole run took {results.get('wall_s', 0) / 60:.1f} minutes.",
    ]
    if command:
        out += ["", f"Command: `{command}`"]
    out += [
        "",
        "## Goals",
        "",
        "| | goal | measured | bar | met | detail |",
        "|---|---|---:|---|---|---|",
    ]
    for g in results.get("goals", []):
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "**no**")
        out.append(
            f"| {g['id']} | {g['what']} | {_x(g['value'])} | {g['goal']} | {met} | {g['detail']} |"
        )
    out += ["", "## Time to first token by kind of turn", "", *variant_lines(results)]
    out += ["", "## How to read this", "", *NOTES]
    return "\n".join(out) + "\n"


NOTES = [
    "- Fresh: a conversation's first turn. Returning: a later turn; between two turns of one",
    "  conversation, every other conversation has had a turn, so its slot has served others and",
    "  only a cache beyond the slots (a RAM or disk tier) holds its history. After restart: the",
    "  first turn after the server was stopped (SIGTERM) and started again; a RAM tier is then",
    "  empty, a disk tier not.",
    "- Each turn resends the whole history with the model's own answers (each kept up to the",
    "  conversation's share of the 2,000-character limit; the oldest rounds dropped past it, as",
    "  Qianfan does). Time to first token is the answer's own first token, on the OpenAI route",
    "  of both servers (one chunk per token); under load it includes waiting for a slot.",
    "- qfserve with no tier restarts half-way too: its turn after the restart is the figure",
    "  without a disk tier. It plays half as many conversations again as there are slots (enough",
    "  for every returning turn to find its slot taken): prefilling every history again for all",
    "  of them would take longer than the rest of the run. The disk variant plays up to the",
    "  first turn after its restart.",
    "- Prompt tokens cached: the share of the returning turns' prompt tokens the server says it",
    "  took from its cache (`prompt_tokens_details.cached_tokens`, llama.cpp's `timings.cache_n`),",
    "  n/a when it does not say; and for qfserve, the share of all prompt tokens (every turn and",
    "  warm-up) its `/metrics` counts as cached (`qfserve_prompt_tokens_cached_total`). The",
    "  JSON keeps qfserve's prefix-cache metrics at the end of each phase (`metrics`).",
    "- Restart s: from SIGTERM until the restarted server answered `/health` (a clean shutdown",
    "  may write the RAM tier to the disk tier first).",
    "- Figures vary about 10% from run to run on this kind of machine: compare within one run.",
]


def write(results: dict[str, Any], output: Path, command: str) -> str:
    """The page at `output` and the results beside it as JSON; returns the page."""
    text = markdown(results, command)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    output.with_suffix(".json").write_text(
        json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return text


def _pool(cfg: dict[str, Any]) -> str:
    pool = cfg.get("kv_pool_tokens")
    return f", sharing one KV pool of {pool} cells" if pool else ""
