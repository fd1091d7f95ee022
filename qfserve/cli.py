"""The `qfserve` command: serve, manage apps."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qfserve.config import Settings, load_settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app_cli = typer.Typer(
    no_args_is_help=True, help="Apps: the API Key / Secret Key pairs clients use."
)
cli.add_typer(app_cli, name="app")
console = Console()

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="A TOML settings file.", envvar="QFSERVE_CONFIG")
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]settings: {exc}[/red]")
        raise typer.Exit(2) from exc


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    config: ConfigOption = None,
    model: Annotated[
        Path | None, typer.Option(help="A GGUF to serve on the first endpoint instead.")
    ] = None,
) -> None:
    """Serve the Qianfan API until SIGINT or SIGTERM."""
    from qfserve.server import create_app, run

    settings = _settings(config, host=host, port=port)
    if model is not None:
        first = settings.endpoints[0].model_copy(update={"model": str(model)})
        settings.endpoints[0] = first
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        service = create_app(settings)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    run(service, settings)


def _apps(config: Path | None):  # type: ignore[no-untyped-def]
    from qfserve.server import open_store

    _database, apps, _tokens = open_store(_settings(config))
    return apps


@app_cli.command("create")
def app_create(
    name: Annotated[str, typer.Option(help="A name for the app.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create an app and print its keys. The Secret Key is shown this once only."""
    created = _apps(config).create(name)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "app_id": created.app.app_id,
                    "name": created.app.name,
                    "api_key": created.app.api_key,
                    "secret_key": created.secret_key,
                }
            )
        )
        return
    console.print(f"app id:     {created.app.app_id}")
    console.print(f"API Key:    {created.app.api_key}")
    console.print(f"Secret Key: {created.secret_key}")
    console.print("[yellow]The Secret Key is not stored: keep it now.[/yellow]")


@app_cli.command("list")
def app_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """List the apps."""
    apps = _apps(config).list()
    if as_json:
        rows = [
            {
                "app_id": a.app_id,
                "name": a.name,
                "api_key": a.api_key,
                "created_at": a.created_at.isoformat(),
                "disabled": a.disabled,
            }
            for a in apps
        ]
        typer.echo(json.dumps(rows))
        return
    table = Table("app id", "name", "API Key", "created")
    for a in apps:
        table.add_row(str(a.app_id), a.name, a.api_key, a.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app_cli.command("delete")
def app_delete(app_id: int, config: ConfigOption = None) -> None:
    """Delete an app; its tokens stop working at once."""
    if not _apps(config).delete(app_id):
        console.print(f"[red]no app {app_id}[/red]")
        raise typer.Exit(1)
    console.print(f"deleted app {app_id}")


def main() -> None:
    cli()
