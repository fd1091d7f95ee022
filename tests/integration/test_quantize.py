"""The bundled model requantized into the data directory, and a quantized KV cache: real
llama.cpp, small contexts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from qfserve.config import EngineSettings
from qfserve.engines.base import GenerationRequest, SamplingParams
from qfserve.engines.llamacpp import LlamaCppEngine
from qfserve.engines.quantize import ensure_quantized, record_path
from qfserve.engines.registry import bundled_model_path, default_model_path
from qfserve.errors import EngineUnavailable

pytestmark = pytest.mark.model

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)


def answer(model: Path, **settings: object) -> str:
    engine_settings = EngineSettings(n_threads=2, context_length=256, n_parallel=2)
    engine = LlamaCppEngine(engine_settings.model_copy(update=settings), str(model), "test")

    async def run() -> str:
        await engine.start()
        try:
            request = GenerationRequest(
                "q", engine.tokenize(PROMPT), SamplingParams(max_tokens=12, temperature=0.0)
            )
            return "".join([delta.text async for delta in engine.generate(request)])
        finally:
            await engine.close()

    return asyncio.run(run())


@pytest.mark.parametrize("quant", ["q4_0", "q8_0", "q4_k_m"])
def test_the_requantized_model_is_made_once_loads_and_answers(tmp_path: Path, quant: str) -> None:
    engine = EngineSettings(model_quant=quant, n_threads=2)
    made = default_model_path(engine, tmp_path)
    assert made == tmp_path / "models" / f"SmolLM2-135M-Instruct.{quant.upper()}.gguf"
    assert json.loads(record_path(made).read_text())["quant"] == quant
    # As with the KV cache, other weights may tip a greedy answer: it answers, in words.
    assert len(answer(made).split()) >= 3
    # Made once: a second start finds it and checks it.
    stamp = made.stat().st_mtime_ns
    assert default_model_path(engine, tmp_path) == made
    assert made.stat().st_mtime_ns == stamp


def test_a_damaged_or_stale_file_is_made_again(tmp_path: Path) -> None:
    source = bundled_model_path()
    made = ensure_quantized(source, "q4_0", tmp_path, threads=2)
    good = made.read_bytes()
    # Cut short, as by a crash while copying it in.
    made.write_bytes(good[: len(good) // 2])
    assert ensure_quantized(source, "q4_0", tmp_path, threads=2).read_bytes() == good
    # Made from another source.
    record = json.loads(record_path(made).read_text())
    record_path(made).write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    stamp = made.stat().st_mtime_ns
    ensure_quantized(source, "q4_0", tmp_path, threads=2)
    assert made.stat().st_mtime_ns != stamp
    assert json.loads(record_path(made).read_text()) == record
    # No record at all.
    record_path(made).unlink()
    ensure_quantized(source, "q4_0", tmp_path, threads=2)
    assert record_path(made).is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        made.name,
        record_path(made).name,
    ]


def test_q4_1_serves_the_shipped_file_as_is(tmp_path: Path) -> None:
    assert default_model_path(EngineSettings(model_quant="q4_1"), tmp_path) == bundled_model_path()
    assert not (tmp_path / "models").exists()


def test_a_q8_0_kv_cache_loads_and_answers() -> None:
    # Not necessarily the f16 cache's words: at this model's size, a change in the attention's
    # arithmetic (flash attention on or off does it too) can tip a greedy answer.
    text = answer(bundled_model_path(), kv_type="q8_0")
    assert len(text.split()) >= 3, text


def test_a_failed_requantization_leaves_nothing_behind(tmp_path: Path) -> None:
    source = tmp_path / "broken.Q4_1.gguf"
    source.write_bytes(b"GGUF but not really")
    out = tmp_path / "models"
    with pytest.raises(EngineUnavailable, match="could not requantize"):
        ensure_quantized(source, "q4_0", out, threads=1)
    assert sorted(p.name for p in out.iterdir()) == [".quantize.lock"]


def test_the_shipped_file_is_served_when_the_data_dir_cannot_hold_the_made_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    engine = EngineSettings(model_quant="q8_0", n_threads=1)
    assert default_model_path(engine, blocked) == bundled_model_path()
    assert "serving the bundled model as shipped" in caplog.text
