from __future__ import annotations

import os
from pathlib import Path

import pytest

from qfserve import config
from qfserve.config import EngineSettings, context_needed, load_settings


def test_toml_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "qfserve.toml"
    config.write_text(
        'port = 9000\nhost = "0.0.0.0"\ntoken_ttl_seconds = 7200\n'
        '[engine]\nn_parallel = 2\n\n[[endpoints]]\nname = "custom"\nmodel = "/m.gguf"\n'
    )
    monkeypatch.setenv("QFSERVE_HOST", "127.0.0.2")
    settings = load_settings(config, port=9100)
    assert settings.port == 9100  # flag
    assert settings.host == "127.0.0.2"  # environment over file
    assert settings.token_ttl_seconds == 7200  # file
    assert settings.engine.n_parallel == 2
    assert [e.name for e in settings.endpoints] == ["custom"]


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFSERVE_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.endpoints[0].name == "llama_2_7b"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'qfserve.db'}"


def test_short_token_ttl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFSERVE_TOKEN_TTL_SECONDS", "60")
    with pytest.raises(ValueError, match="at least 3600"):
        load_settings()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


def test_a_known_kv_type_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFSERVE_ENGINE__KV_TYPE", "Q8_0")
    assert load_settings().engine.kv_type == "q8_0"


@pytest.mark.parametrize("setting", ["KV_TYPE", "MODEL_QUANT"])
def test_an_unknown_kv_type_or_quant_is_refused_with_the_choices(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"QFSERVE_ENGINE__{setting}", "q9_9")
    with pytest.raises(ValueError, match=rf"engine.{setting.lower()} 'q9_9' is not one of \w"):
        load_settings()


def test_the_context_holds_the_longest_history_and_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2,000 characters at 1.9 tokens each (the bundled tokenizer's Chinese), the template,
    # and the 2,048 tokens of the longest answer.
    assert context_needed(2000, 2048) == 6144
    assert load_settings().engine.context_length == 6144
    config = tmp_path / "qfserve.toml"
    config.write_text(
        '[[endpoints]]\nname = "a"\nmax_total_chars = 500\nmax_output_tokens = 1024\n'
        '[[endpoints]]\nname = "b"\nmax_total_chars = 100\nmax_output_tokens = 512\n'
    )
    assert load_settings(config).engine.context_length == context_needed(500, 1024) == 2048
    monkeypatch.setenv("QFSERVE_ENGINE__CONTEXT_LENGTH", "1000")
    assert load_settings(config).engine.context_length == 1000


def test_the_kv_pool_holds_two_contexts_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().engine.kv_pool_tokens == 2 * 6144
    config = tmp_path / "qfserve.toml"
    config.write_text(
        '[[endpoints]]\nname = "a"\nmax_total_chars = 500\nmax_output_tokens = 1024\n'
    )
    assert load_settings(config).engine.kv_pool_tokens == 2 * 2048
    monkeypatch.setenv("QFSERVE_ENGINE__KV_CACHE_TOKENS", "3000")
    assert load_settings(config).engine.kv_pool_tokens == 3000


def test_a_kv_pool_smaller_than_one_context_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QFSERVE_ENGINE__KV_CACHE_TOKENS", "4096")
    # The default context, sized for the endpoints' limits, is 6,144 tokens.
    with pytest.raises(ValueError, match=r"kv_cache_tokens \(4096\) must be at least"):
        load_settings()
    monkeypatch.setenv("QFSERVE_ENGINE__CONTEXT_LENGTH", "4097")
    with pytest.raises(ValueError, match=r"engine.context_length \(4097\)"):
        load_settings()
    monkeypatch.setenv("QFSERVE_ENGINE__CONTEXT_LENGTH", "4096")
    assert load_settings().engine.kv_pool_tokens == 4096


def test_a_pool_of_a_context_per_sequence_is_not_shared() -> None:
    assert EngineSettings(context_length=1024).kv_shared
    assert not EngineSettings(context_length=1024, kv_cache_tokens=8 * 1024).kv_shared
    assert EngineSettings(context_length=1024, kv_cache_tokens=8 * 1024 - 1).kv_shared
    assert not EngineSettings(context_length=1024, n_parallel=2).kv_shared


def test_the_ram_tier_takes_a_quarter_of_memory_at_most_8_gib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pages = {"SC_PHYS_PAGES": 0, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    for gib, expected in ((8, 2048), (24, 6144), (64, 8192)):
        pages["SC_PHYS_PAGES"] = gib * 2**30 // 4096
        assert config.default_cache_ram_mb() == expected
        assert EngineSettings().cache_ram_mb == expected
    assert EngineSettings(cache_ram_mb=0).cache_ram_mb == 0
