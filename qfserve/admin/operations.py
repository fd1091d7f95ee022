"""What an operator does to apps and their keys, each action recorded in the audit log: the one
implementation behind both `qfserve app ...` and the admin API."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from qfserve.access.app_keys import AppKeys
from qfserve.access.apps import QUOTA_FIELDS, App, AppRegistry, NewApp
from qfserve.access.bearer_tokens import BearerTokens, MintedToken
from qfserve.access.iam_keys import IamKeys
from qfserve.access.v2_keys import V2Keys
from qfserve.admin.audit import Actor, AuditLog
from qfserve.admin.times import aware

KeyKind = Literal["app_key", "v2_key", "iam_key"]
KEY_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Any kind of key as listings show it: its public part only."""

    kind: KeyKind
    app_id: int
    prefix: str
    created_at: datetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class NewKey:
    kind: KeyKind
    app_id: int
    prefix: str
    created_at: datetime
    secret: str  # the whole key (or the IAM Secret Key): exists only here


@dataclass(frozen=True, slots=True)
class Rotated:
    app_id: int
    secret_key: str  # exists only here
    revoked_tokens: int


class Operations:
    """Blocking database calls: the server runs them in a worker thread. Raise `AppNotFound`
    for an app that does not exist (or was deleted), `ValueError` for a wrong argument."""

    def __init__(
        self,
        apps: AppRegistry,
        app_keys: AppKeys,
        v2_keys: V2Keys,
        iam_keys: IamKeys,
        bearer_tokens: BearerTokens,
        audit: AuditLog,
    ) -> None:
        self.apps = apps
        self._app_keys = app_keys
        self._v2_keys = v2_keys
        self._iam_keys = iam_keys
        self._bearer_tokens = bearer_tokens
        self._audit = audit

    def create_app(self, actor: Actor, name: str) -> NewApp:
        if not 1 <= len(name) <= 128:
            raise ValueError("an app's name is 1 to 128 characters")
        created = self.apps.create(name)
        self._audit.record(actor, "app.create", _app(created.app.app_id), name=name)
        return created

    def delete_app(self, actor: Actor, app_id: int) -> None:
        self.apps.delete(app_id)
        self._audit.record(actor, "app.delete", _app(app_id))

    def set_disabled(self, actor: Actor, app_id: int, disabled: bool) -> App:
        self.apps.set_disabled(app_id, disabled)
        self._audit.record(actor, "app.disable" if disabled else "app.enable", _app(app_id))
        return self.apps.get(app_id)

    def rotate_secret(self, actor: Actor, app_id: int, *, keep_tokens: bool = False) -> Rotated:
        secret_key = self.apps.rotate_secret(app_id)
        revoked = 0 if keep_tokens else self.apps.revoke_tokens(app_id)
        self._audit.record(
            actor, "app.rotate_secret", _app(app_id), keep_tokens=keep_tokens, revoked=revoked
        )
        return Rotated(app_id, secret_key, revoked)

    def revoke_tokens(self, actor: Actor, app_id: int) -> int:
        revoked = self.apps.revoke_tokens(app_id)
        self._audit.record(actor, "app.revoke_tokens", _app(app_id), revoked=revoked)
        return revoked

    def set_access(
        self,
        actor: Actor,
        app_id: int,
        quota: Mapping[str, int | None],
        endpoints: list[str] | None,
    ) -> App:
        """Set the given quota overrides (0 or None clears one) and, if given, the endpoints the
        app may use (an empty list: all)."""
        unknown = set(quota) - set(QUOTA_FIELDS)
        if unknown:
            raise ValueError(f"unknown quota {', '.join(sorted(unknown))}")
        app = self.apps.set_access(app_id, quota, endpoints)
        detail: dict[str, str | int | None] = {name: value for name, value in quota.items()}
        if endpoints is not None:
            detail["endpoints"] = ",".join(sorted(set(endpoints)))
        self._audit.record(actor, "app.access", _app(app_id), **detail)
        return app

    def keys(self, app_id: int) -> list[KeyInfo]:
        """Every key of the app, each kind's oldest first (V2 bearer tokens are not listed)."""
        self.apps.get(app_id)
        found = [
            KeyInfo("app_key", app_id, k.prefix, aware(k.created_at), k.revoked)
            for k in self._app_keys.for_app(app_id)
        ]
        found += [
            KeyInfo("v2_key", app_id, k.prefix, aware(k.created_at), k.revoked)
            for k in self._v2_keys.for_app(app_id)
        ]
        found += [
            KeyInfo("iam_key", app_id, k.access_key, aware(k.created_at), False)
            for k in self._iam_keys.for_app(app_id)
        ]
        return found

    def create_key(self, actor: Actor, app_id: int, kind: KeyKind) -> NewKey:
        self.apps.get(app_id)
        made: NewKey
        if kind == "app_key":
            app_key = self._app_keys.create(app_id)
            made = NewKey(kind, app_id, app_key.prefix, app_key.created_at, app_key.key)
        elif kind == "v2_key":
            v2_key = self._v2_keys.create(app_id)
            made = NewKey(kind, app_id, v2_key.prefix, datetime.now(UTC), v2_key.api_key)
        elif kind == "iam_key":
            iam = self._iam_keys.create(app_id)
            made = NewKey(kind, app_id, iam.access_key, iam.created_at, iam.secret_key)
        else:
            raise ValueError(f"kind must be one of {', '.join(KEY_KINDS)}")
        self._audit.record(actor, "key.create", _app(app_id), kind=kind, prefix=made.prefix)
        return made

    def revoke_key(self, actor: Actor, kind: KeyKind, prefix: str) -> int:
        """Revoke the live keys of that kind and prefix; how many were."""
        if kind == "app_key":
            revoked = self._app_keys.revoke(prefix)
        elif kind == "v2_key":
            revoked = self._v2_keys.revoke(prefix)
        elif kind == "iam_key":
            revoked = self._iam_keys.revoke(prefix)
        else:
            raise ValueError(f"kind must be one of {', '.join(KEY_KINDS)}")
        if revoked:
            self._audit.record(actor, "key.revoke", f"{kind}:{prefix}", revoked=revoked)
        return revoked

    def playground_token(self, actor: Actor, app_id: int, lifetime_seconds: int) -> MintedToken:
        """A short-lived V2 bearer token of the app, for the console's playground."""
        self.apps.get(app_id)
        minted = self._bearer_tokens.mint(app_id, lifetime_seconds)
        self._audit.record(
            actor, "playground.token", _app(app_id), lifetime_seconds=lifetime_seconds
        )
        return minted


def _app(app_id: int) -> str:
    return f"app:{app_id}"
