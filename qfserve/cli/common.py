"""What the commands share: settings from flags, the store, the console."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from qfserve.config import Settings, load_settings

console = Console()
errors = Console(stderr=True)

# Every Typer of the command line. Plain help (click's own layout, no rich panels) names option
# values by their metavar rather than type tags such as <bool>, and joins a docstring's lines
# into paragraphs that fit the terminal. Tracebacks never show local variables: they can hold
# Secret Keys and tokens.
TYPER_OPTIONS: dict[str, Any] = {
    "rich_markup_mode": None,
    "pretty_exceptions_show_locals": False,
}

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", metavar="FILE", help="A TOML settings file.", envvar="QFSERVE_CONFIG"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def settings_from(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except (FileNotFoundError, ValueError) as exc:
        errors.print(f"settings: {exc}")
        raise typer.Exit(2) from exc


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(message)
    return typer.Exit(code)
