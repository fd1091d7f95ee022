"""The master key that IAM Secret Keys derive from: only a random one is accepted."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from qfserve.access.iam_keys import InvalidMasterKey, load_master_key

PLACEHOLDER = "change-me: 64 random hex digits, from a secret store"


def test_a_created_key_file_is_kept_and_read_back(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "master.key"
    first = load_master_key("", key_file)
    assert len(first) == 64 and load_master_key("", key_file) == first
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_hex_setting_is_the_key_itself() -> None:
    key = secrets.token_hex(32)
    assert load_master_key(key, Path("/nonexistent")) == key.encode()
    assert load_master_key(f" {key.upper()}\n", Path("/nonexistent")) == key.upper().encode()


@pytest.mark.parametrize(
    "setting", [PLACEHOLDER, "secret", secrets.token_hex(16), secrets.token_hex(32) + "0", "g" * 64]
)
def test_a_setting_that_is_not_64_hex_digits_is_refused(setting: str) -> None:
    with pytest.raises(InvalidMasterKey, match="openssl rand -hex 32"):
        load_master_key(setting, Path("/nonexistent"))


def test_a_key_file_edited_by_hand_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text("hunter2\n")
    with pytest.raises(InvalidMasterKey, match=str(key_file)):
        load_master_key("", key_file)


def test_serve_with_a_placeholder_key_exits_with_the_remedy(tmp_path: Path) -> None:
    env = {**os.environ, "QFSERVE_DATA_DIR": str(tmp_path), "QFSERVE_MASTER_KEY": PLACEHOLDER}
    done = subprocess.run(
        [sys.executable, "-m", "qfserve", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "secrets.token_hex(32)" in output and "openssl rand -hex 32" in output
    assert "Traceback" not in output
    # Refused before the store is touched.
    assert not (tmp_path / "qfserve.db").exists()
