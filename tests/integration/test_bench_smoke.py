"""A tiny `qfserve bench --standard` run end to end: its JSON has every field the report needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qfserve.bench.peers import find_llama_server, missing_llama_cpp_server_modules

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.mark.timeout(900)
def test_tiny_standard_bench(tmp_path: Path) -> None:
    results_file, page = tmp_path / "bench.json", tmp_path / "RESULTS.md"
    # The comparison needs llama-cpp-python's `server` extra; without it, qfserve alone.
    compare = not missing_llama_cpp_server_modules()
    command = [
        sys.executable, "-m", "qfserve.bench", "--standard",
        "--requests", "2", "--concurrency", "1,2", "--max-tokens", "16", "--rounds", "1",
        "--conversations", "1", "--clients", "4",
        "--scenarios", "load,baseline,conversation,disconnect",
        "--json", str(results_file), "--output", str(page),
        *(["--compare"] if compare else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=840, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads(results_file.read_text())
    assert {"cpu", "logical_cores", "ram_bytes", "python", "llama_cpp_python", "date"} <= set(
        results["machine"]
    )
    assert results["settings"]["max_tokens"] == 16 and results["settings"]["threads"] >= 1

    peers = ["qfserve", "llama_cpp.server"] if compare else ["qfserve"]
    # The reference joins by itself once scripts/llama_server.sh has built it.
    if find_llama_server() is not None:
        peers.append("llama-server")
    load = {(s["peer"], s["concurrency"]): s for s in results["load"]}
    assert set(load) == {(p, c) for p in peers for c in (1, 2)}
    for summary in [*load.values(), results["baseline"]]:
        assert summary["errors"] == 0, summary["first_errors"]
        assert summary["requests"] == 2
        assert 0 < summary["output_tokens"] <= 2 * 16
        assert summary["output_tokens_per_s"] > 0
        for key in ("ttft_s", "itl_s", "e2e_s"):
            assert set(summary[key]) >= {"p50", "p95", "p99"}
        assert summary["ttft_s"]["p50"] > 0 and summary["e2e_s"]["p99"] > 0
        assert summary["peak_rss_bytes"] > 0
    assert load[("qfserve", 1)]["counted_by"] == {"usage": 2}
    # Every answer judged for loops, by its prompt's language (the first two prompts: en, zh).
    assert load[("qfserve", 1)]["loops"]["answers"] == 2
    assert set(load[("qfserve", 1)]["loops"]["by_lang"]) == {"en", "zh"}

    conversations = results["conversations"]
    assert {c["peer"] for c in conversations} == set(peers)
    for conversation in conversations:
        assert [t["turn"] for t in conversation["turns"]] == list(range(1, 9))
        assert conversation["ttft_ratio_last_to_first"] > 0

    assert results["disconnect"]["peer"] == "qfserve"
    if results["disconnect"]["available"]:
        assert results["disconnect"]["seconds_to_zero"] is not None
    else:
        assert results["disconnect"]["note"].startswith("not available")

    assert [t["id"] for t in results["targets"]] == ["a", "b1", "b2", "r1", "r2", "r3", "c", "d"]
    assert page.read_text().startswith("# qfserve bench results")
    assert "## Looping answers" in page.read_text()
    assert json.loads(page.with_suffix(".json").read_text()) == results


@pytest.mark.timeout(600)
def test_tiny_structured_bench(tmp_path: Path) -> None:
    page = tmp_path / "RESULTS.md"
    command = [
        sys.executable, "-m", "qfserve.bench", "--standard", "--scenarios", "structured",
        "--requests", "2", "--concurrency", "1,2", "--max-tokens", "16", "--rounds", "1",
        "--output", str(page),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=580, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(page.with_suffix(".json").read_text())
    assert "load" not in results or results["load"] == []

    structured = results["structured"]
    assert structured["available"], structured.get("note")
    cases = [(c["case"], c["concurrency"], c["streams"]) for c in structured["cases"]]
    assert cases == [
        ("free", 1, 1),
        ("schema", 1, 1),
        ("free", 2, 2),
        ("schema", 2, 2),
        ("mixed_free", 2, 1),
        ("mixed_schema", 2, 1),
    ]
    for case in structured["cases"]:
        assert case["errors"] == 0, case["first_errors"]
        assert case["counted_by"] == {"usage": case["requests"]}
        assert 0 < case["output_tokens"] <= case["requests"] * 16
        assert case["output_tokens_per_s"] > 0 and case["per_stream_tokens_per_s"] > 0
        assert case["peak_rss_bytes"] > 0
        if case["case"] in ("schema", "mixed_schema"):
            assert case["json_answers"] == case["requests"]

    found = {t["id"]: t for t in results["targets"]}
    for key in ("s1", "s2", "s3"):
        assert found[key]["value"] is not None and found[key]["value"] > 0
    assert "## Structured output: a JSON schema vs free text" in page.read_text()


@pytest.mark.timeout(300)
def test_tiny_gateway_bench(tmp_path: Path) -> None:
    if missing_llama_cpp_server_modules():
        pytest.skip("llama_cpp.server's extra is not installed")
    page = tmp_path / "GATEWAY.md"
    command = [
        sys.executable, "-m", "qfserve.bench", "--gateway", "--requests", "2",
        "--output", str(page),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = page.read_text()
    assert "## What qfserve adds to time to first token" in text
    results = json.loads(page.with_suffix(".json").read_text())
    assert results["dialects"] == ["v1", "openai", "v2"]
    pairs = {"model_upstream": 2 * 4, "instant_upstream": 2 * 4, "pausing_upstream": 2}
    for section, expected in pairs.items():
        for dialect in ("v1", "openai", "v2"):
            part = results[section]["dialects"][dialect]
            assert part["errors"] == 0, (section, dialect, part["first_errors"])
            assert part["paired_differences_ms"]["n"] == expected, (section, dialect)
            assert part["added_ms_p50"] is not None and part["held_back"] == 0
    assert "| pausing 100 ms | Qianfan V2 | 2 | 0 |" in text


@pytest.mark.timeout(900)
def test_tiny_many_conversations_bench(tmp_path: Path) -> None:
    page = tmp_path / "CONVERSATIONS.md"
    # llama-server only when scripts/llama_server.sh has built it: tests never build it.
    with_llama_server = find_llama_server() is not None
    command = [
        sys.executable, "-m", "qfserve.bench", "--scenarios", "many-conversations",
        "--conversations", "3", "--turns", "2", "--parallel", "2", "--max-tokens", "4",
        "--output", str(page),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=880, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(page.with_suffix(".json").read_text())

    assert results["settings"]["conversations"] == 3 and results["settings"]["parallel"] == 2
    played = {v["variant"]: v for v in results["variants"]}
    expected = ["ram", "no-tier", "disk", *(["llama-server"] if with_llama_server else [])]
    assert list(played) == expected
    for variant in played.values():
        turns = variant["turns"]
        assert len(turns) == 3 * 2, variant["variant"]
        assert all(t["error"] is None for t in turns), turns
        assert all(t["ttft_s"] > 0 and t["prompt_tokens"] > 0 for t in turns)
        # Turn 2 resends turn 1 and its answer.
        assert {t["messages"] for t in turns} == {1, 3}
        assert variant["peak_rss_bytes"] > 0
        if variant["server"] == "qfserve":
            # At the end of each phase: one, or two around a restart.
            assert len(variant["metrics"]) == (1 if variant["restart_after"] is None else 2)
            assert all(
                any(k.startswith("qfserve_prompt_tokens_total") for k in phase)
                for phase in variant["metrics"]
            )
            assert (variant["restart_s"] is None) == (variant["restart_after"] is None)
    kinds = {name: sorted({t["kind"] for t in v["turns"]}) for name, v in played.items()}
    assert kinds["ram"] == ["fresh", "returning"]
    assert kinds["no-tier"] == kinds["disk"] == ["after_restart", "fresh"]

    found = {g["id"]: g for g in results["goals"]}
    assert list(found) == ["m1", "m2", "m3"]
    assert found["m1"]["value"] > 0 and found["m3"]["value"] > 0
    assert (found["m2"]["value"] is not None) == with_llama_server
    assert page.read_text().startswith("# qfserve bench: many conversations")
