"""`qfserve app ...`: apps, their keys, their access and quotas."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from qfserve.access.apps import App, AppNotFound, AppRegistry
from qfserve.admin.audit import command_line_actor
from qfserve.admin.operations import KeyKind, NewKey, Operations

if TYPE_CHECKING:
    from qfserve.server import Store

from qfserve.cli.common import TYPER_OPTIONS, ConfigOption, JsonOption, console, fail, settings_from

apps_cli = typer.Typer(
    no_args_is_help=True,
    help="Apps: the API Key / Secret Key pairs clients use, their keys, access and quotas.",
    **TYPER_OPTIONS,
)
AppId = Annotated[int, typer.Argument(metavar="ID", help="The app id.", show_default=False)]


def _registry(config: Path | None) -> AppRegistry:
    from qfserve.server import open_store

    return open_store(settings_from(config)).apps


def _operations(config: Path | None) -> Operations:
    """The operations an admin of the API has too, recorded in the audit log as this user's."""
    from qfserve.admin.audit import AuditLog
    from qfserve.admin.services import operations_on
    from qfserve.server import open_store

    store = open_store(settings_from(config))
    return operations_on(store, AuditLog(store.database))


def _new_key(config: Path | None, app_id: int, kind: KeyKind) -> NewKey:
    try:
        return _operations(config).create_key(command_line_actor(), app_id, kind)
    except AppNotFound as exc:
        raise fail(str(exc)) from exc


def _store_of(config: Path | None, app_id: int) -> Store:
    """The store, once the app is known to exist."""
    from qfserve.server import open_store

    store = open_store(settings_from(config))
    try:
        store.apps.get(app_id)
    except AppNotFound as exc:
        raise fail(str(exc)) from exc
    return store


def _describe(app: App) -> dict[str, object]:
    return {
        "app_id": app.app_id,
        "name": app.name,
        "api_key": app.api_key,
        "created_at": app.created_at.isoformat(),
        "disabled": app.disabled,
        "endpoints": sorted(app.endpoints) if app.endpoints is not None else None,
        **app.quota,
    }


@apps_cli.command("create")
def create(
    name: Annotated[str, typer.Option(metavar="NAME", help="A name for the app.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create an app and print its keys. The Secret Key is shown this once only."""
    created = _operations(config).create_app(command_line_actor(), name)
    if as_json:
        keys = {"api_key": created.app.api_key, "secret_key": created.secret_key}
        typer.echo(json.dumps({"app_id": created.app.app_id, "name": name, **keys}))
        return
    console.print(f"app id:     {created.app.app_id}")
    console.print(f"API Key:    {created.app.api_key}")
    console.print(f"Secret Key: {created.secret_key}")
    console.print("[yellow]The Secret Key is not stored: keep it now.[/yellow]")


@apps_cli.command("list")
def list_apps(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List the apps (deleted ones are not shown)."""
    apps = _registry(config).all()
    if as_json:
        typer.echo(json.dumps([_describe(a) for a in apps]))
        return
    # The API Key is copied from here, so it is never cut or wrapped: narrow terminals fold the
    # other columns instead.
    key_width = max((len(a.api_key) for a in apps), default=len("API Key"))
    table = Table(
        Column("id", no_wrap=True),
        Column("name", overflow="fold"),
        Column("API Key", no_wrap=True, min_width=key_width),
        Column("state", no_wrap=True),
        Column("endpoints", overflow="fold"),
        Column("qps/rpm/tpm/daily/total", overflow="fold"),
        box=None,
        padding=(0, 2, 0, 0),
        caption="Every field, as JSON: qfserve app list --json",
        caption_justify="left",
    )
    for a in apps:
        limits = "/".join(str(a.quota[k] or "-") for k in ("qps", "rpm", "tpm", "daily", "total"))
        table.add_row(
            str(a.app_id),
            a.name,
            a.api_key,
            "disabled" if a.disabled else "enabled",
            ",".join(sorted(a.endpoints)) if a.endpoints is not None else "all",
            limits,
        )
    console.print(table)


def _change(
    config: Path | None, app_id: int, change: Callable[[Operations], object], done: str
) -> None:
    try:
        change(_operations(config))
    except AppNotFound as exc:
        raise fail(str(exc)) from exc
    console.print(f"app {app_id}: {done}")


@apps_cli.command("delete")
def delete(app_id: AppId, config: ConfigOption = None) -> None:
    """Delete an app. Its keys and tokens stop working at once (error 15); its usage is kept."""
    _change(config, app_id, lambda ops: ops.delete_app(command_line_actor(), app_id), "deleted")


@apps_cli.command("disable")
def disable(app_id: AppId, config: ConfigOption = None) -> None:
    """Refuse the app's requests (error 15) until it is enabled."""
    _change(
        config, app_id, lambda ops: ops.set_disabled(command_line_actor(), app_id, True), "disabled"
    )


@apps_cli.command("enable")
def enable(app_id: AppId, config: ConfigOption = None) -> None:
    """Accept the app's requests again."""
    _change(
        config, app_id, lambda ops: ops.set_disabled(command_line_actor(), app_id, False), "enabled"
    )


Limit = Annotated[
    int | None, typer.Option(metavar="N", help="0 clears the override (the default applies).")
]


@apps_cli.command("quota")
def quota(
    app_id: AppId,
    qps: Limit = None,
    rpm: Limit = None,
    tpm: Limit = None,
    daily: Limit = None,
    total: Limit = None,
    endpoints: Annotated[
        str | None,
        typer.Option(metavar="LIST", help="Comma-separated endpoints the app may use; '' for all."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Set the app's quotas and allowed endpoints. Options not given stay as they are."""
    given = {
        name: value
        for name, value in {
            "qps": qps,
            "rpm": rpm,
            "tpm": tpm,
            "daily": daily,
            "total": total,
        }.items()
        if value is not None
    }
    allowed = (
        [e.strip() for e in endpoints.split(",") if e.strip()] if endpoints is not None else None
    )
    try:
        app = _operations(config).set_access(command_line_actor(), app_id, given, allowed)
    except AppNotFound as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(_describe(app)))


@apps_cli.command("revoke-tokens")
def revoke_tokens(app_id: AppId, config: ConfigOption = None) -> None:
    """Revoke every access token of the app. Its clients get error 110 and fetch new ones."""
    try:
        count = _operations(config).revoke_tokens(command_line_actor(), app_id)
    except AppNotFound as exc:
        raise fail(str(exc)) from exc
    console.print(f"app {app_id}: {count} tokens revoked")


@apps_cli.command("rotate-secret")
def rotate_secret(
    app_id: AppId,
    keep_tokens: Annotated[
        bool, typer.Option(help="Keep the tokens issued with the old key valid.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Give the app a new Secret Key (shown once). The old key, and by default the tokens issued
    with it, stop working at once."""
    try:
        rotated = _operations(config).rotate_secret(
            command_line_actor(), app_id, keep_tokens=keep_tokens
        )
    except AppNotFound as exc:
        raise fail(str(exc)) from exc
    secret_key, revoked = rotated.secret_key, rotated.revoked_tokens
    if as_json:
        typer.echo(json.dumps({"app_id": app_id, "secret_key": secret_key, "revoked": revoked}))
        return
    console.print(f"Secret Key: {secret_key}")
    console.print(f"[yellow]Shown once. {revoked} tokens revoked.[/yellow]")


@apps_cli.command("iam-key")
def iam_key(
    app_id: AppId,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create an IAM key pair for bce-auth-v1 signed requests. The Access Key and Secret Key
    are the SDK's QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY; the Secret Key is shown this once."""
    key = _new_key(config, app_id, "iam_key")
    if as_json:
        keys = {"access_key": key.prefix, "secret_key": key.secret}
        typer.echo(json.dumps({"app_id": app_id, **keys}))
        return
    console.print(f"Access Key: {key.prefix}")
    console.print(f"Secret Key: {key.secret}")


keys_cli = typer.Typer(
    no_args_is_help=True, help="Long-lived app keys for the OpenAI routes.", **TYPER_OPTIONS
)
apps_cli.add_typer(keys_cli, name="key")


@keys_cli.command("create")
def key_create(
    app_id: AppId,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create an app key for the OpenAI routes. Sent as "Authorization: Bearer sk-qf-...";
    shown this once, stored hashed."""
    created = _new_key(config, app_id, "app_key")
    if as_json:
        typer.echo(json.dumps({"app_id": app_id, "key": created.secret, "prefix": created.prefix}))
        return
    console.print(f"App key: {created.secret}")
    console.print(f"[yellow]Shown once. Revoke it with `qfserve app key revoke {created.prefix}`.")


@keys_cli.command("revoke")
def key_revoke(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="The key's prefix.", show_default=False)
    ],
    config: ConfigOption = None,
) -> None:
    """Revoke an app key. PREFIX is the key's start, as key create printed it."""
    if not _operations(config).revoke_key(command_line_actor(), "app_key", prefix):
        raise fail(f"no live key {prefix}")
    console.print(f"revoked {prefix}")


v2_keys_cli = typer.Typer(
    no_args_is_help=True, help="V2 API keys (`bce-v3/ALTAK-...`) for the /v2 routes."
)
apps_cli.add_typer(v2_keys_cli, name="v2-key")


@v2_keys_cli.command("create")
def v2_key_create(
    app_id: AppId,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a V2 API key (`Authorization: Bearer bce-v3/ALTAK-...`). Shown this once; stored
    hashed."""
    created = _new_key(config, app_id, "v2_key")
    if as_json:
        typer.echo(json.dumps({"app_id": app_id, "api_key": created.secret}))
        return
    # soft_wrap: the key and the command stay on one line each, whatever the terminal's width.
    console.print(f"API key: {created.secret}", soft_wrap=True)
    console.print(
        f"[yellow]Shown once. Revoke it with `qfserve app v2-key revoke {created.prefix}`.",
        soft_wrap=True,
    )


@v2_keys_cli.command("revoke")
def v2_key_revoke(
    prefix_or_id: Annotated[
        str, typer.Argument(help="The key as listed (bce-v3/ALTAK-...) or its id (ALTAK-...).")
    ],
    config: ConfigOption = None,
) -> None:
    """Revoke a V2 API key (or a bearer token): refused from the next request on."""
    if not _operations(config).revoke_key(command_line_actor(), "v2_key", prefix_or_id):
        raise fail(f"no live V2 key {prefix_or_id}")
    console.print(f"revoked {prefix_or_id}")


@v2_keys_cli.command("list")
def v2_key_list(app_id: AppId, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List the app's V2 API keys by their public part (the secret is never kept)."""
    keys = _store_of(config, app_id).v2_keys.for_app(app_id)
    if as_json:
        described = [
            {
                "app_id": k.app_id,
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked,
            }
            for k in keys
        ]
        typer.echo(json.dumps(described))
        return
    table = Table("key", "created", "state")
    for k in keys:
        table.add_row(k.prefix, k.created_at.isoformat(), "revoked" if k.revoked else "live")
    console.print(table)
