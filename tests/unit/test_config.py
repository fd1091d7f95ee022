from __future__ import annotations

from pathlib import Path

import pytest

from qfserve.config import load_settings


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
