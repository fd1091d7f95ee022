"""The bench and its fake upstreams stay out of the serving process: they are a separate extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Prints the qfserve.bench modules loaded once `code` has run.
_LOADED = "import sys; print(sorted(m for m in sys.modules if m.startswith('qfserve.bench')))"


def _bench_modules_after(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{_LOADED}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_the_server_imports_no_bench_module() -> None:
    assert _bench_modules_after("import qfserve.server") == "[]"


def test_the_serve_command_imports_no_bench_module() -> None:
    code = (
        "from qfserve.cli import cli\n"
        "try:\n"
        "    cli(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    assert _bench_modules_after(code) == "[]"


def _qfserve(*args: str, hide: str | None = None) -> subprocess.CompletedProcess[str]:
    # A module set to None in sys.modules cannot be imported: as if it were not installed.
    hidden = f"sys.modules[{hide!r}] = None\n" if hide else ""
    run = f"sys.argv = ['qfserve', *{args!r}]\nfrom qfserve.cli import main\nmain()"
    code = f"import sys\n{hidden}{run}"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_bench_help_is_the_bench_commands_own() -> None:
    done = _qfserve("bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "--gateway" in done.stdout and "qfserve bench" in done.stdout


@pytest.mark.parametrize("args", [("bench", "--standard"), ("bench", "--gateway")])
def test_bench_without_its_extra_names_the_extra(args: tuple[str, ...]) -> None:
    done = _qfserve(*args, hide="psutil")
    assert done.returncode == 2
    assert "pip install 'qfserve[bench]'" in done.stderr and "psutil" in done.stderr
    assert "Traceback" not in done.stderr
