"""The admin API's request bodies. Their JSON Schemas are the OpenAPI document's."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from qfserve.admin.operations import KeyKind


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Login(Body):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class NewApp(Body):
    name: str = Field(min_length=1, max_length=128)


class Empty(Body):
    """No fields: an empty body, `{}`, or none at all."""


class RotateSecret(Body):
    keep_tokens: bool = False


class Quota(Body):
    """Each given limit: a positive integer overrides the default; 0 or null clears it."""

    qps: int | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    daily: int | None = Field(default=None, ge=0)
    total: int | None = Field(default=None, ge=0)


class Access(Body):
    """Only what is given changes. `endpoints`: the endpoints the app may use; [] or null: all."""

    quota: Quota | None = None
    endpoints: list[str] | None = None


class NewKey(Body):
    kind: KeyKind


class RevokeKey(Body):
    kind: KeyKind
    prefix: str = Field(min_length=1, max_length=128)


class PlaygroundToken(Body):
    lifetime_seconds: int | None = Field(default=None, ge=60, le=3600)
