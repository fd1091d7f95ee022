"""Bearer tokens: minted for an app with a lifetime within bounds, refused once it has passed.
Time is a clock the tests move, never slept through."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from qfserve.access.apps import AppRegistry
from qfserve.access.bearer_tokens import (
    MAX_LIFETIME_SECONDS,
    BearerTokens,
    clamp_lifetime,
)
from qfserve.access.v2_keys import V2Keys
from qfserve.errors import ExpiredIamToken, InvalidIamToken
from qfserve.store.database import Database

START = 1_800_000_000.0
DAY = 86400


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[tuple[int, BearerTokens, V2Keys]]:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.upgrade()
    app_id = AppRegistry(database).create("a").app.app_id
    yield app_id, BearerTokens(database, clock), V2Keys(database, clock)
    database.close()


def test_valid_until_its_expiry_then_refused(
    store: tuple[int, BearerTokens, V2Keys], clock: Clock
) -> None:
    app_id, tokens, keys = store
    minted = tokens.mint(app_id, 43200)
    assert re.match(r"^bce-v3/ALTAK-[A-Za-z0-9]{20}/[0-9a-f]{40}$", minted.token)
    assert (minted.app_id, minted.created_at, minted.expires_at) == (
        app_id,
        START,
        START + 43200,
    )
    clock.now = START + 43199.9
    assert keys.verify(minted.token).app_id == app_id
    clock.now = START + 43200
    with pytest.raises(ExpiredIamToken) as raised:
        keys.verify(minted.token)
    assert raised.value.v2_code == "invalid_iam_token" and raised.value.code == 111
    assert isinstance(raised.value, InvalidIamToken)


@pytest.mark.parametrize(
    ("asked", "given"),
    [(43200, 43200), (0, 1), (-5, 1), (MAX_LIFETIME_SECONDS + 1, MAX_LIFETIME_SECONDS)],
)
def test_lifetime_is_clamped(
    store: tuple[int, BearerTokens, V2Keys], asked: int, given: int
) -> None:
    app_id, tokens, _ = store
    assert clamp_lifetime(asked) == given
    minted = tokens.mint(app_id, asked)
    assert minted.expires_at - minted.created_at == given


def test_tokens_are_revocable_and_independent(store: tuple[int, BearerTokens, V2Keys]) -> None:
    app_id, tokens, keys = store
    first, second = tokens.mint(app_id, 600), tokens.mint(app_id, 600)
    assert keys.revoke(first.token) == 1
    with pytest.raises(InvalidIamToken):
        keys.verify(first.token)
    assert keys.verify(second.token).app_id == app_id


def test_long_expired_tokens_are_deleted_when_one_is_minted(
    store: tuple[int, BearerTokens, V2Keys], clock: Clock
) -> None:
    app_id, tokens, keys = store
    old = tokens.mint(app_id, 60)
    api_key = keys.create(app_id).api_key
    clock.now = START + 60 + DAY  # a day after its expiry: still told it expired
    tokens.mint(app_id, 60)
    with pytest.raises(ExpiredIamToken):
        keys.verify(old.token)
    clock.now += 1
    tokens.mint(app_id, 60)
    with pytest.raises(InvalidIamToken) as raised:
        keys.verify(old.token)
    assert not isinstance(raised.value, ExpiredIamToken)  # gone
    assert keys.verify(api_key).app_id == app_id  # API keys never expire
