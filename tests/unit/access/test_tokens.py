from __future__ import annotations

import time
from pathlib import Path

import pytest

from qfserve.access.apps import AppRegistry
from qfserve.access.tokens import TokenIssuer
from qfserve.errors import AppUnavailable, ExpiredToken, InvalidToken, MissingToken, OAuthError
from qfserve.store.database import Database


class Clock:
    """A clock the test moves by hand: expiry without sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.25)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> tuple[AppRegistry, TokenIssuer]:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.upgrade()
    return AppRegistry(database), TokenIssuer(database, 3600, clock=clock)


def test_many_tokens_per_app_are_valid(store: tuple[AppRegistry, TokenIssuer]) -> None:
    apps, tokens = store
    created = apps.create("a")
    first, second = tokens.issue(created.app.app_id), tokens.issue(created.app.app_id)
    assert tokens.verify(first.access_token) == tokens.verify(second.access_token)
    assert apps.revoke_tokens(created.app.app_id) == 2
    with pytest.raises(InvalidToken):
        tokens.verify(first.access_token)


def test_token_shape(store: tuple[AppRegistry, TokenIssuer]) -> None:
    apps, tokens = store
    app_id = apps.create("a").app.app_id
    prefix, random_part, ttl, expiry, tail = tokens.issue(app_id).access_token.split(".")
    assert prefix == "24" and len(random_part) == 32 and ttl == "3600"
    assert int(expiry) == 1_700_000_000 + 3600
    assert tail.endswith(f"-{app_id}")


def test_verification_errors(store: tuple[AppRegistry, TokenIssuer]) -> None:
    apps, tokens = store
    with pytest.raises(MissingToken):
        tokens.verify(None)
    with pytest.raises(MissingToken):
        tokens.verify("not-a-token")
    with pytest.raises(InvalidToken):
        tokens.verify("24." + "a" * 32 + ".3600.1.1-1")
    created = apps.create("b")
    issued = tokens.issue(created.app.app_id)
    apps.set_disabled(created.app.app_id, True)
    with pytest.raises(AppUnavailable):
        tokens.verify(issued.access_token)
    apps.delete(created.app.app_id)
    with pytest.raises(AppUnavailable):
        tokens.verify(issued.access_token)
    with pytest.raises(OAuthError, match="unknown client id"):
        apps.authenticate(created.app.api_key, created.secret_key)


def test_expired(store: tuple[AppRegistry, TokenIssuer], clock: Clock) -> None:
    apps, tokens = store
    issued = tokens.issue(apps.create("c").app.app_id)
    clock.now = 1_700_000_000 + 3600 - 0.5
    tokens.verify(issued.access_token)
    clock.now += 0.5
    with pytest.raises(ExpiredToken):
        tokens.verify(issued.access_token)


def test_the_real_clock_is_the_default(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.upgrade()
    tokens = TokenIssuer(database, 3600)
    expiry = int(
        tokens.issue(AppRegistry(database).create("e").app.app_id).access_token.split(".")[3]
    )
    assert abs(expiry - time.time() - 3600) < 60


def test_authenticate(store: tuple[AppRegistry, TokenIssuer]) -> None:
    apps, _ = store
    created = apps.create("d")
    assert apps.authenticate(created.app.api_key, created.secret_key).app_id == created.app.app_id
    with pytest.raises(OAuthError, match="Client authentication failed"):
        apps.authenticate(created.app.api_key, "wrong")
    with pytest.raises(OAuthError, match="unknown client id"):
        apps.authenticate("nobody", created.secret_key)
