"""The admin API's request bodies. Their JSON Schemas are the OpenAPI document's."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from qfserve.admin.operations import KeyKind


def _storable(text: str) -> str:
    """Text every database stores: no NUL (PostgreSQL refuses it), no lone surrogate."""
    if "\x00" in text:
        raise ValueError("must not contain NUL")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_storable)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Login(Body):
    name: Text = Field(min_length=1, max_length=64)
    password: Text = Field(min_length=1, max_length=256)


class NewApp(Body):
    name: Text = Field(min_length=1, max_length=128)


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
    endpoints: list[Text] | None = None


class NewKey(Body):
    kind: KeyKind


class RevokeKey(Body):
    kind: KeyKind
    prefix: Text = Field(min_length=1, max_length=128)


class PlaygroundToken(Body):
    lifetime_seconds: int | None = Field(default=None, ge=60, le=3600)
