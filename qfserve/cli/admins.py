"""`qfserve admin ...`: the admin API's operators and their bearer tokens, against the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qfserve.admin.audit import AuditLog, command_line_actor
from qfserve.admin.credentials import AdminExists, AdminNotFound, Admins, InvalidAdminName
from qfserve.cli.common import TYPER_OPTIONS, ConfigOption, JsonOption, console, fail, settings_from
from qfserve.store.database import Database

admins_cli = typer.Typer(
    no_args_is_help=True,
    help="Admins of the admin API and console: passwords and bearer tokens.",
    **TYPER_OPTIONS,
)
tokens_cli = typer.Typer(
    no_args_is_help=True,
    help="Bearer tokens for scripts (Authorization: Bearer qfa-...).",
    **TYPER_OPTIONS,
)
admins_cli.add_typer(tokens_cli, name="token")

Name = Annotated[str, typer.Argument(metavar="NAME", help="The admin's name.", show_default=False)]


def _store(config: Path | None) -> tuple[Admins, AuditLog]:
    from qfserve.server import open_store

    database: Database = open_store(settings_from(config)).database
    return Admins(database), AuditLog(database)


@admins_cli.command("create")
def create(
    name: Name,
    reset: Annotated[
        bool, typer.Option("--reset", help="Give an existing admin a new password.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create an admin and print its password, this once only (stored hashed). With --reset,
    an existing admin gets a new password and its sessions end."""
    admins, audit = _store(config)
    existed = reset and admins.exists(name)
    try:
        password = admins.create(name, reset=reset)
    except (AdminExists, InvalidAdminName) as exc:
        raise fail(str(exc)) from exc
    audit.record(
        command_line_actor(), "admin.reset" if existed else "admin.create", f"admin:{name}"
    )
    if as_json:
        typer.echo(json.dumps({"name": name, "password": password}))
        return
    console.print(f"admin:    {name}")
    console.print(f"password: {password}", soft_wrap=True)
    console.print("[yellow]The password is not stored: keep it now.[/yellow]")


@admins_cli.command("list")
def list_admins(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List the admins and their tokens' prefixes (never a password or a token)."""
    admins, _ = _store(config)
    found = admins.all()
    if as_json:
        described = [
            {
                "name": a.name,
                "created_at": a.created_at.isoformat(),
                "tokens": [
                    {
                        "prefix": t.prefix,
                        "created_at": t.created_at.isoformat(),
                        "revoked": t.revoked,
                    }
                    for t in a.tokens
                ],
            }
            for a in found
        ]
        typer.echo(json.dumps(described))
        return
    table = Table("name", "created", "live tokens", box=None, padding=(0, 2, 0, 0))
    for a in found:
        live = ", ".join(t.prefix for t in a.tokens if not t.revoked) or "-"
        table.add_row(a.name, a.created_at.isoformat(timespec="seconds"), live)
    console.print(table)


@admins_cli.command("delete")
def delete(name: Name, config: ConfigOption = None) -> None:
    """Delete an admin: its sessions and tokens stop working at once."""
    admins, audit = _store(config)
    try:
        admins.delete(name)
    except AdminNotFound as exc:
        raise fail(str(exc)) from exc
    audit.record(command_line_actor(), "admin.delete", f"admin:{name}")
    console.print(f"admin {name}: deleted")


@tokens_cli.command("create")
def token_create(
    name: Name,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a bearer token for the admin, shown this once only (stored hashed)."""
    admins, audit = _store(config)
    try:
        made = admins.create_token(name)
    except AdminNotFound as exc:
        raise fail(str(exc)) from exc
    audit.record(command_line_actor(), "admin.token.create", f"admin:{name}", prefix=made.prefix)
    if as_json:
        typer.echo(json.dumps({"name": name, "token": made.token, "prefix": made.prefix}))
        return
    console.print(f"token: {made.token}", soft_wrap=True)
    console.print(
        f"[yellow]Shown once. Revoke it with `qfserve admin token revoke {made.prefix}`.",
        soft_wrap=True,
    )


@tokens_cli.command("list")
def token_list(name: Name, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List the admin's tokens by prefix."""
    admins, _ = _store(config)
    try:
        tokens = admins.tokens(name)
    except AdminNotFound as exc:
        raise fail(str(exc)) from exc
    if as_json:
        described = [
            {"prefix": t.prefix, "created_at": t.created_at.isoformat(), "revoked": t.revoked}
            for t in tokens
        ]
        typer.echo(json.dumps(described))
        return
    table = Table("token", "created", "state", box=None, padding=(0, 2, 0, 0))
    for t in tokens:
        table.add_row(
            t.prefix, t.created_at.isoformat(timespec="seconds"), "revoked" if t.revoked else "live"
        )
    console.print(table)


@tokens_cli.command("revoke")
def token_revoke(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="The token's prefix.", show_default=False)
    ],
    config: ConfigOption = None,
) -> None:
    """Revoke an admin token: refused from the next request on."""
    admins, audit = _store(config)
    if not admins.revoke_token(prefix):
        raise fail(f"no live admin token {prefix}")
    audit.record(command_line_actor(), "admin.token.revoke", f"token:{prefix}")
    console.print(f"revoked {prefix}")
