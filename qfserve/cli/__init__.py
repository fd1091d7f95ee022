"""qfserve: serve the Qianfan API, manage apps and their keys, read usage, benchmark."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from qfserve.cli.admins import admins_cli
from qfserve.cli.apps import apps_cli
from qfserve.cli.common import TYPER_OPTIONS, ConfigOption, fail, settings_from
from qfserve.cli.usage import usage
from qfserve.config import Settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, **TYPER_OPTIONS)

# Shown in `serve --help`: the options default to None so that a settings file or the
# environment can set them, and the real defaults live in Settings.
_DEFAULT_HOST = Settings.model_fields["host"].default
_DEFAULT_PORT = Settings.model_fields["port"].default


# The bench is an extra (`qfserve[bench]`) and no part of serving: `qfserve serve` must not import
# it, so its options are parsed by its own command, loaded only when `bench` is asked for.
def bench(ctx: typer.Context) -> None:
    """Measure throughput and latency of qfserve and OpenAI-compatible servers (see --help)."""
    try:
        from qfserve.bench.cli import bench as run_bench

        command = typer.Typer(add_completion=False, **TYPER_OPTIONS)
        command.command()(run_bench)
        typer.main.get_command(command).main(ctx.args, prog_name="qfserve bench")
    except ModuleNotFoundError as exc:
        hint = escape("pip install 'qfserve[bench]'")
        raise fail(f"qfserve bench needs {exc.name}, part of its extra: {hint}", 2) from exc


@cli.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help=f"Address to listen on [default: {_DEFAULT_HOST}, or `host` in the settings].",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT",
            help=f"Port to listen on [default: {_DEFAULT_PORT}, or `port` in the settings].",
        ),
    ] = None,
    config: ConfigOption = None,
    model: Annotated[
        Path | None,
        typer.Option(
            metavar="GGUF",
            help="A GGUF file to serve on the first endpoint instead of its configured model.",
        ),
    ] = None,
) -> None:
    """Serve the Qianfan API until SIGINT or SIGTERM.

    Settings come from --config (or QFSERVE_CONFIG), then QFSERVE_* environment variables,
    then these flags, each overriding the one before.
    """
    from qfserve.access.iam_keys import InvalidMasterKey
    from qfserve.process import log_backends, run
    from qfserve.server import create_app

    settings = settings_from(config, host=host, port=port)
    if model is not None:
        settings.endpoints[0] = settings.endpoints[0].model_copy(update={"model": str(model)})
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log_backends(settings)
    try:
        service = create_app(settings)
    except (FileNotFoundError, InvalidMasterKey) as exc:
        raise fail(str(exc), 2) from exc
    run(service, settings)


# Listed in `qfserve --help` in this order: serving first.
cli.add_typer(apps_cli, name="app")
cli.add_typer(admins_cli, name="admin")
cli.command()(usage)
cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(bench)


def main() -> None:
    cli()
