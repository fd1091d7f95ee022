"""The sample configurations in docs/examples/ load with the current settings, name no setting
that does not exist (unknown keys are ignored, so a misspelt one would silently do nothing), and
the cluster sample's master key placeholder is refused rather than used."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from qfserve.access.iam_keys import InvalidMasterKey, load_master_key
from qfserve.config import EndpointSettings, Settings, load_settings

EXAMPLES = sorted((Path(__file__).parents[2] / "docs" / "examples").glob("*.toml"))


def unknown_keys(table: dict[str, Any], model: type[BaseModel], where: str = "") -> list[str]:
    found = []
    for key, value in table.items():
        field = model.model_fields.get(key)
        if field is None:
            found.append(where + key)
            continue
        nested = field.annotation
        if isinstance(value, dict) and isinstance(nested, type) and issubclass(nested, BaseModel):
            found += unknown_keys(value, nested, f"{where}{key}.")
        if isinstance(value, list) and key == "endpoints":
            for item in value:
                found += unknown_keys(item, EndpointSettings, f"{where}{key}[].")
    return found


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_an_example_loads_and_names_only_real_settings(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QFSERVE_DATA_DIR", str(tmp_path))
    settings = load_settings(example)
    assert settings.endpoints
    assert unknown_keys(tomllib.loads(example.read_text()), Settings) == []


def test_the_cluster_placeholder_master_key_is_refused(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLES[0].with_name("cluster.toml"))
    with pytest.raises(InvalidMasterKey, match="openssl rand -hex 32"):
        load_master_key(settings.master_key, tmp_path / "master.key")
