"""`qfserve bench --kernels`: the bundled model's weight types (and KV cache types) compared on
this machine, in one run, in this process.

For each variant, a fresh embedded engine (8 slots, the same threads):
- prefill: a prompt of `PREFILL_TOKENS` tokens, tokens over the time to the first answer token;
- decode: one greedy sequence, tokens after the first over the time after the first;
- batch of 8: eight greedy sequences at once, all their tokens over the wall time;
- answers: the bench prompts answered greedily (no loop guard), compared token by token with
  the first variant's (the bundled file as shipped): how many agree on their first
  `AGREE_TOKENS` tokens, the mean shared opening, and how many loop.
Speeds are medians over `repeats` in each of `rounds`; the variants take turns, in reverse order
every other round, so that a warming CPU or a noisy neighbour falls on all alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfserve.bench import loops
from qfserve.bench.inprocess import Answer, answer_all, chat_tokens, generate, started
from qfserve.bench.workload import Prompt
from qfserve.config import MODEL_QUANTS, EngineSettings
from qfserve.engines.base import SamplingParams
from qfserve.engines.llamacpp import LlamaCppEngine

PREFILL_TOKENS = 500
AGREE_TOKENS = 32
BATCH = 8
STORY = "Write a long story about a dragon who learns to cook."
DEFAULT_VARIANTS = "q4_1,q4_0,q8_0,q4_k_m,q4_1:q8_0"


@dataclass(frozen=True, slots=True)
class Variant:
    """Weights (`engine.model_quant`) and KV cache type (`engine.kv_type`)."""

    quant: str
    kv_type: str = "f16"
    # Tokens per sequence (`engine.context_length`); None: the tool's own choice.
    context_length: int | None = None
    # The KV pool's cells (`engine.kv_cache_tokens`); None: the engine's default.
    kv_cache_tokens: int | None = None

    @property
    def name(self) -> str:
        label = self.quant.upper()
        if self.kv_type != "f16":
            label += f", KV {self.kv_type}"
        if self.context_length is not None:
            label += f", ctx {self.context_length}"
        return label if self.kv_cache_tokens is None else f"{label}, pool {self.kv_cache_tokens}"


def parse_variants(text: str) -> list[Variant]:
    """`q4_1,q8_0,q4_1:q8_0,q4_1:q8_0:4096,q4_0:f16:6144:49152`: weight types, each optionally
    with a KV cache type, a context length per sequence and the KV pool's cells after colons."""
    found: list[Variant] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        quant, kv_type, context, pool, *rest = [*part.split(":"), "", "", ""]
        if quant not in MODEL_QUANTS or any(rest):
            raise ValueError(f"not a variant: {part!r} (weights among {', '.join(MODEL_QUANTS)})")
        for name, number in (("context length", context), ("KV pool size", pool)):
            if number and not (number.isdigit() and int(number) > 0):
                raise ValueError(f"not a {name}: {number!r}")
        EngineSettings(kv_type=kv_type or "f16")  # refuses an unknown KV type
        found.append(
            Variant(
                quant,
                kv_type or "f16",
                int(context) if context else None,
                int(pool) if pool else None,
            )
        )
    if not found:
        raise ValueError("no variants given")
    return found


def _prefill_prompt(engine: LlamaCppEngine, prompts: Sequence[Prompt], mark: int) -> list[int]:
    """`PREFILL_TOKENS` tokens of the English prompts, opened by a mark of its own, so that no
    slot's cache holds any of it."""
    text = "\n\n".join(p.text for p in prompts if p.lang == "en")
    body = engine.tokenize(text, special=False)
    while len(body) < PREFILL_TOKENS:
        body += body
    opening = engine.tokenize(f"[{mark}] ", special=False)
    return (opening + body)[:PREFILL_TOKENS]


async def _speeds(
    engine: LlamaCppEngine, prompts: Sequence[Prompt], repeats: int, max_tokens: int, mark: int
) -> dict[str, list[float]]:
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    one = SamplingParams(max_tokens=1, temperature=0.0)
    found: dict[str, list[float]] = {"prefill": [], "decode": [], "batch": []}
    for k in range(repeats):
        prompt = _prefill_prompt(engine, prompts, mark + k)
        first = (await generate(engine, prompt, one)).first_s
        if first:
            found["prefill"].append(len(prompt) / first)
        story = chat_tokens(engine, f"[{mark + k}] {STORY}")
        rate = (await generate(engine, story, greedy)).decode_tokens_per_s
        if rate:
            found["decode"].append(rate)
        stories = [Prompt(str(i), "en", f"[{mark + k}.{i}] {STORY}") for i in range(BATCH)]
        answers, wall = await answer_all(engine, stories, greedy, BATCH)
        found["batch"].append(sum(a.tokens for a in answers) / wall)
    return found


def _agreement(
    engine: LlamaCppEngine, answers: Sequence[Answer], reference: Sequence[Answer]
) -> dict[str, Any]:
    shared: list[int] = []
    agree = 0
    for mine, theirs in zip(answers, reference, strict=True):
        a = engine.tokenize(mine.text, special=False)
        b = engine.tokenize(theirs.text, special=False)
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        shared.append(n)
        # Agreeing: the same first tokens, or the same whole answer if it is shorter.
        agree += n >= min(AGREE_TOKENS, max(len(a), len(b)))
    return {
        "agree_first_tokens": agree,
        "mean_shared_opening": statistics.fmean(shared) if shared else None,
    }


async def run_kernels(
    *,
    model_for: Callable[[Variant], Path],
    variants: Sequence[Variant],
    prompts: Sequence[Prompt],
    threads: int,
    rounds: int,
    repeats: int,
    max_tokens: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Round 1 goes in the given order, so the first variant, the reference, answers first."""
    rows: dict[Variant, dict[str, Any]] = {v: {"speeds": {}} for v in variants}
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    reference: list[Answer] | None = None
    for round_number in range(1, rounds + 1):
        order = list(variants) if round_number % 2 else list(reversed(variants))
        for variant in order:
            row = rows[variant]
            path = model_for(variant)
            settings = EngineSettings(
                n_threads=threads,
                n_parallel=BATCH,
                context_length=variant.context_length or 2048,
                kv_type=variant.kv_type,
                kv_cache_tokens=variant.kv_cache_tokens,
            )
            log(f"round {round_number}: {variant.name} ({path.name})")
            async with started(path, settings) as engine:
                mark = 1000 * round_number
                speeds = await _speeds(engine, prompts, repeats, max_tokens, mark)
                for key, values in speeds.items():
                    row["speeds"].setdefault(key, []).extend(values)
                if "answers" in row:
                    continue
                answers, _ = await answer_all(engine, prompts, greedy, BATCH)
                row["file_bytes"] = path.stat().st_size
                row["answers"] = [a.text for a in answers]
                langs = [p.lang for p in prompts]
                row["loops"] = loops.count(zip(langs, (a.text for a in answers), strict=True))
                row["tokens_per_answer"] = statistics.fmean(a.tokens for a in answers)
                if variant == variants[0]:
                    reference = answers
                elif reference is not None:
                    row.update(_agreement(engine, answers, reference))
    return {"variants": [_summary(v, rows[v]) for v in variants]}


def _summary(variant: Variant, row: dict[str, Any]) -> dict[str, Any]:
    speeds = {k: statistics.median(v) if v else None for k, v in row["speeds"].items()}
    return {
        "name": variant.name,
        "quant": variant.quant,
        "kv_type": variant.kv_type,
        "file_bytes": row.get("file_bytes"),
        "prefill_tokens_per_s": speeds.get("prefill"),
        "decode_tokens_per_s": speeds.get("decode"),
        "batch8_tokens_per_s": speeds.get("batch"),
        "samples": {k: len(v) for k, v in row["speeds"].items()},
        "agree_first_tokens": row.get("agree_first_tokens"),
        "mean_shared_opening": row.get("mean_shared_opening"),
        "tokens_per_answer": row.get("tokens_per_answer"),
        "loops": row.get("loops"),
        "answers": row.get("answers", []),
    }


NOTE = (
    f"Prefill: a {PREFILL_TOKENS}-token prompt, tokens over the time to the first answer token. "
    f"Decode: one sequence, tokens after the first over the time after it. Batch: {BATCH} "
    "sequences at once, all tokens over the wall time. Speeds are medians. Answers are compared "
    "with the first row's token by token; an answer loops when fewer than 30% of the 4-grams of "
    "its second half are distinct."
)


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> list[str]:
    variants = results["variants"]
    n = len(variants[0]["answers"]) if variants else 0
    base = variants[0] if variants else {}
    lines = [
        f"| weights | file MB | prefill tok/s | decode tok/s | batch of {BATCH} tok/s "
        f"| vs {base.get('name', '-')}: prefill / decode / batch "
        f"| same first {AGREE_TOKENS} tokens | mean shared opening | looping answers |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]

    def vs(key: str, v: dict[str, Any]) -> str:
        ref = base.get(key)
        return _f(v[key] / ref, 2) if v[key] and ref else "-"

    for i, v in enumerate(variants):
        size = "-" if v["file_bytes"] is None else f"{v['file_bytes'] / 2**20:.0f}"
        agree = "reference" if i == 0 else f"{v['agree_first_tokens']} / {n}"
        keys = ("prefill_tokens_per_s", "decode_tokens_per_s", "batch8_tokens_per_s")
        lines.append(
            f"| {v['name']} | {size} | {_f(v['prefill_tokens_per_s'])} "
            f"| {_f(v['decode_tokens_per_s'])} | {_f(v['batch8_tokens_per_s'])} "
            f"| {' / '.join(vs(k, v) for k in keys)} | {agree} "
            f"| {'-' if i == 0 else _f(v['mean_shared_opening'])} | {loops.cell(v['loops'])} |"
        )
    return lines
