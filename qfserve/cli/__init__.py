"""The `qfserve` command: serve, manage apps, read usage, benchmark."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from qfserve.bench.cli import bench
from qfserve.cli.apps import apps_cli
from qfserve.cli.common import ConfigOption, fail, settings_from
from qfserve.cli.usage import usage

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
cli.add_typer(apps_cli, name="app")
cli.command()(usage)
cli.command()(bench)


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


def main() -> None:
    cli()
