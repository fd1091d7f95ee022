"""`qfserve bench --kernels` and `--loops`: the in-process comparisons, run and reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from qfserve.bench import kernels as kernels_mod
from qfserve.bench import loopguard
from qfserve.bench.report import machine
from qfserve.bench.workload import Prompt, load_prompts
from qfserve.config import EngineSettings, load_settings
from qfserve.engines.registry import default_model_path


def _prompts(folder: Path, limit: int | None) -> list[Prompt]:
    prompts = load_prompts(folder / "prompts.json")
    if limit is not None and limit < 1:
        raise ValueError("--prompts must be positive")
    return prompts[:limit] if limit else prompts


def _header(title: str, results: dict[str, Any], command: str, what: str) -> list[str]:
    m = results["machine"]
    return [
        f"# {title}",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['logical_cores']} logical cores, load average "
        f"{m['load_average_at_start']} at start), llama-cpp-python {m['llama_cpp_python']}, "
        f"qfserve {m['git_commit']}. {what}",
        "",
        f"Command: `{command}`",
        "",
    ]


def _write(text: str, results: dict[str, Any], output: Path | None) -> None:
    if output is None:
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    dumped = json.dumps(results, ensure_ascii=False, indent=1) + "\n"
    output.with_suffix(".json").write_text(dumped, encoding="utf-8")


def kernels_mode(
    variants_text: str,
    folder: Path,
    limit: int | None,
    threads: int | None,
    rounds: int,
    repeats: int,
    max_tokens: int,
    output: Path | None,
    command: str,
    console: Console,
) -> str:
    """The table (markdown), also written to `output` with its JSON beside it."""
    variants = kernels_mod.parse_variants(variants_text)
    prompts = _prompts(folder, limit)
    settings = load_settings()
    n_threads = threads or settings.engine.n_threads

    def model_for(variant: kernels_mod.Variant) -> Path:
        # The same file, in the same place, that `engine.model_quant` would serve.
        engine = EngineSettings(model_quant=variant.quant, n_threads=n_threads)
        return default_model_path(engine, settings.data_dir)

    for variant in variants:  # made (once) before anything is timed
        model_for(variant)
    results: dict[str, Any] = {"machine": machine()}
    results |= asyncio.run(
        kernels_mod.run_kernels(
            model_for=model_for, variants=variants, prompts=prompts, threads=n_threads,
            rounds=max(1, rounds), repeats=max(1, repeats), max_tokens=max_tokens,
            log=console.print,
        )
    )  # fmt: skip
    results["settings"] = {
        "threads": n_threads, "rounds": max(1, rounds), "repeats": max(1, repeats),
        "max_tokens": max_tokens, "prompts": len(prompts),
    }  # fmt: skip
    what = (
        f"{n_threads} threads, {max(1, rounds)} round(s) x {max(1, repeats)} repeat(s); answers "
        f"of at most {max_tokens} tokens, greedy, no loop guard, over {len(prompts)} bench "
        "prompts."
    )
    lines = _header("The bundled model's weight types", results, command, what)
    lines += kernels_mod.table(results)
    lines += ["", kernels_mod.NOTE]
    text = "\n".join(lines) + "\n"
    _write(text, results, output)
    return text


def loops_mode(
    guards_text: str,
    model: Path | None,
    folder: Path,
    limit: int | None,
    threads: int | None,
    max_tokens: int,
    output: Path | None,
    command: str,
    console: Console,
) -> str:
    guards = loopguard.parse_guards(guards_text)
    prompts = [*_prompts(folder, limit), *loopguard.README_PROMPTS[: limit or None]]
    settings = load_settings()
    n_threads = threads or settings.engine.n_threads
    path = model or default_model_path(settings.engine, settings.data_dir)
    results: dict[str, Any] = {"machine": machine()}
    results |= asyncio.run(
        loopguard.run_loops(
            model=path, prompts=prompts, guards=guards, samplings=loopguard.SAMPLINGS,
            threads=n_threads, max_tokens=max_tokens, log=console.print,
        )
    )  # fmt: skip
    results["settings"] = {
        "model": path.name, "threads": n_threads, "max_tokens": max_tokens,
        "prompts": [p.id for p in prompts],
    }  # fmt: skip
    what = (
        f"Model {path.name}, {n_threads} threads, {len(prompts)} prompts (the bench's and the "
        f"README's), answers of at most {max_tokens} tokens, 8 at a time; greedy, and at the "
        f"endpoint's default sampling with seed {loopguard.SEED}."
    )
    lines = _header("Loop guards", results, command, what)
    lines += loopguard.table(results)
    lines += ["", *loopguard.guard_lines()]
    text = "\n".join(lines) + "\n"
    _write(text, results, output)
    return text
