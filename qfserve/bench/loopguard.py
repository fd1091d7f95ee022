"""`qfserve bench --loops`: loop-guard settings compared, to choose an endpoint's defaults.

The bench prompts (and the README's examples) are answered by the embedded engine in this
process, 8 at a time, with each guard setting, greedily and with the endpoint's default sampling
(temperature 0.6, top_p 0.9, top_k 40, a fixed seed): how many answers loop (`loops.py`), in all
and per language, how many ran to the token cap, tokens per answer and output tokens/s.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qfserve.bench import loops
from qfserve.bench.inprocess import answer_all, started
from qfserve.bench.workload import Prompt
from qfserve.config import EndpointSettings, EngineSettings
from qfserve.engines.base import LoopGuard, SamplingParams

# The examples of README.md (and README.zh-CN.md), which a new user tries first.
README_PROMPTS = (
    Prompt("readme-japan", "en", "What is the capital of Japan?"),
    Prompt("readme-road-trip", "en", "Give me three tips for a road trip."),
    Prompt("readme-colors", "en", "Name three primary colors."),
    Prompt("readme-person", "en", "Describe a fictional person."),
)
_DRY = LoopGuard(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_last_n=1024)
GUARDS: dict[str, LoopGuard] = {
    "off": LoopGuard(),
    "dry": _DRY,
    "dry-strong": dataclasses.replace(_DRY, dry_multiplier=1.5),
    "presence": LoopGuard(presence_penalty=0.6, penalty_last_n=256),
    "dry+presence": dataclasses.replace(_DRY, presence_penalty=0.3, penalty_last_n=256),
    "dry-strong+presence": dataclasses.replace(
        _DRY, dry_multiplier=1.5, presence_penalty=0.3, penalty_last_n=256
    ),
}
DEFAULT_GUARDS = "off,dry,dry+presence"
SAMPLINGS = ("greedy", "default")
SEED = 42


def parse_guards(text: str) -> list[str]:
    chosen = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in chosen if g not in GUARDS]
    if unknown or not chosen:
        raise ValueError(f"guards: choose among {', '.join(GUARDS)}")
    return chosen


def sampling_for(kind: str, guard: LoopGuard, max_tokens: int) -> SamplingParams:
    if kind == "greedy":
        return SamplingParams(max_tokens=max_tokens, temperature=0.0, loop_guard=guard)
    endpoint = EndpointSettings()
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=endpoint.temperature,
        top_p=endpoint.top_p,
        top_k=endpoint.top_k,
        seed=SEED,
        loop_guard=guard,
    )


async def run_loops(
    *,
    model: Path,
    prompts: Sequence[Prompt],
    guards: Sequence[str],
    samplings: Sequence[str],
    threads: int,
    max_tokens: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    settings = EngineSettings(n_threads=threads, n_parallel=8, context_length=2048)
    rows: list[dict[str, Any]] = []
    async with started(model, settings) as engine:
        for kind in samplings:
            for name in guards:
                log(f"{kind} sampling, guard {name}")
                sampling = sampling_for(kind, GUARDS[name], max_tokens)
                answers, wall = await answer_all(engine, prompts, sampling, 8)
                tokens = [a.tokens for a in answers]
                texts = [a.text for a in answers]
                rows.append(
                    {
                        "sampling": kind,
                        "guard": name,
                        "settings": dataclasses.asdict(GUARDS[name]),
                        "loops": loops.count(zip([p.lang for p in prompts], texts, strict=True)),
                        "at_cap": sum(a.finish == "length" for a in answers),
                        "tokens_per_answer": statistics.fmean(tokens),
                        "output_tokens_per_s": sum(tokens) / wall if wall > 0 else None,
                        "looping_prompts": [
                            p.id for p, t in zip(prompts, texts, strict=True) if loops.loops(t)
                        ],
                        "answers": texts,
                    }
                )
    return {"rows": rows}


def table(results: dict[str, Any]) -> list[str]:
    rows = results["rows"]
    langs = sorted({lang for r in rows for lang in r["loops"]["by_lang"]})
    lines = [
        "| sampling | guard | looping | "
        + " | ".join(f"looping {lang}" for lang in langs)
        + " | at the cap | tokens per answer | output tok/s |",
        "|---|---|---:|" + "---:|" * len(langs) + "---:|---:|---:|",
    ]
    for r in rows:
        per_lang = [loops.cell(r["loops"]["by_lang"].get(lang)) for lang in langs]
        tps = "-" if r["output_tokens_per_s"] is None else f"{r['output_tokens_per_s']:.1f}"
        lines.append(
            f"| {r['sampling']} | {r['guard']} | {loops.cell(r['loops'])} | "
            + " | ".join(per_lang)
            + f" | {r['at_cap']} | {r['tokens_per_answer']:.0f} | {tps} |"
        )
    return lines


def guard_lines() -> list[str]:
    lines = ["| guard | settings |", "|---|---|"]
    for name, g in GUARDS.items():
        parts = []
        if g.dry_multiplier > 0:
            parts.append(
                f"DRY multiplier {g.dry_multiplier}, base {g.dry_base}, allowed length "
                f"{g.dry_allowed_length}, last {g.dry_last_n} tokens"
            )
        if g.presence_penalty or g.frequency_penalty:
            parts.append(
                f"presence penalty {g.presence_penalty}, frequency penalty "
                f"{g.frequency_penalty}, last {g.penalty_last_n} tokens"
            )
        lines.append(f"| {name} | {'; '.join(parts) or 'no DRY, no penalties'} |")
    return lines
