"""`qfserve usage`: requests and tokens from the usage ledger."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from qfserve.access.usage import GroupBy, UsageLedger, utc_instant
from qfserve.cli.common import ConfigOption, JsonOption, console, fail, settings_from


def usage(
    app: Annotated[int | None, typer.Option("--app", metavar="ID", help="Only this app.")] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="From this date (YYYY-MM-DD, UTC) or ISO time on."),
    ] = None,
    by: Annotated[
        str, typer.Option(metavar="day|endpoint|user|app", help="What to group the rows by.")
    ] = "day",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Requests and tokens per day, endpoint, user or app."""
    from qfserve.server import open_store

    if by not in ("day", "endpoint", "user", "app"):
        raise fail("--by must be one of day, endpoint, user, app", 2)
    start = None
    if since is not None:
        try:
            start = utc_instant(since)
        except ValueError as exc:
            raise fail(f"--since: not a date: {since}", 2) from exc
    group_by: GroupBy = by  # type: ignore[assignment]  # checked above
    rows = UsageLedger(open_store(settings_from(config)).database).summarize(
        app_id=app, since=start, by=group_by
    )
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        by: row.group,
                        "requests": row.requests,
                        "prompt_tokens": row.prompt_tokens,
                        "completion_tokens": row.completion_tokens,
                        "total_tokens": row.total_tokens,
                    }
                    for row in rows
                ]
            )
        )
        return
    table = Table(by, "requests", "prompt tokens", "completion tokens", "total tokens")
    for row in rows:
        table.add_row(
            row.group,
            str(row.requests),
            str(row.prompt_tokens),
            str(row.completion_tokens),
            str(row.total_tokens),
        )
    console.print(table)
