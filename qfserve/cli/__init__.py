"""The `qfserve` command: serve, manage apps, read usage, benchmark."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from qfserve.cli.apps import apps_cli
from qfserve.cli.common import ConfigOption, fail, settings_from
from qfserve.cli.usage import usage

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
cli.add_typer(apps_cli, name="app")
cli.command()(usage)


# The bench is an extra (`qfserve[bench]`) and no part of serving: `qfserve serve` must not import
# it, so its options are parsed by its own command, loaded only when `bench` is asked for.
@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Measure throughput and latency of qfserve and OpenAI-compatible servers (see --help)."""
    try:
        from qfserve.bench.cli import bench as run_bench

        command = typer.Typer(add_completion=False)
        command.command()(run_bench)
        typer.main.get_command(command).main(ctx.args, prog_name="qfserve bench")
    except ModuleNotFoundError as exc:
        hint = escape("pip install 'qfserve[bench]'")
        raise fail(f"qfserve bench needs {exc.name}, part of its extra: {hint}", 2) from exc


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
    from qfserve.process import run
    from qfserve.server import create_app

    settings = settings_from(config, host=host, port=port)
    if model is not None:
        settings.endpoints[0] = settings.endpoints[0].model_copy(update={"model": str(model)})
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        service = create_app(settings)
    except FileNotFoundError as exc:
        raise fail(str(exc), 2) from exc
    run(service, settings)


def main() -> None:
    cli()
