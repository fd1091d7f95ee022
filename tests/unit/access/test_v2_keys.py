"""V2 API keys: their shape, kept hashed, verified, listed by their public part, revoked."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qfserve.access.apps import AppRegistry
from qfserve.access.bearer_tokens import BearerTokens
from qfserve.access.v2_keys import V2Keys, key_id_of
from qfserve.errors import AppUnavailable, InvalidIamToken
from qfserve.store.database import Database
from qfserve.store.schema import V2KeyRow

SHAPE = re.compile(r"^bce-v3/ALTAK-[A-Za-z0-9]{20}/[0-9a-f]{40}$")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.upgrade()
    yield database
    database.close()


def test_shape_and_only_a_digest_is_kept(database: Database) -> None:
    app_id = AppRegistry(database).create("a").app.app_id
    created = V2Keys(database).create(app_id)
    assert SHAPE.match(created.api_key)
    assert created.api_key.startswith(created.prefix + "/")
    assert created.prefix == created.api_key.rsplit("/", 1)[0]
    with database.session() as session:
        (row,) = session.scalars(select(V2KeyRow)).all()
        stored = [row.key_hash, row.key_id, str(row.app_id)]
    assert row.key_hash == hashlib.sha256(created.api_key.encode()).hexdigest()
    secret = created.api_key.rsplit("/", 1)[1]
    assert not any(secret in value for value in stored)
    assert V2Keys(database).create(app_id).api_key != created.api_key


def test_verify(database: Database) -> None:
    apps, keys = AppRegistry(database), V2Keys(database)
    app_id = apps.create("a").app.app_id
    key = keys.create(app_id).api_key
    assert keys.verify(key).app_id == app_id
    wrong_secret = key[:-1] + ("0" if key[-1] != "0" else "1")
    malformed = [None, "", "bce-v3/ALTAK-x/y", key + "0", key.upper(), "sk-qf-abc"]
    for presented in [wrong_secret, *malformed]:
        with pytest.raises(InvalidIamToken) as raised:
            keys.verify(presented)
        assert raised.value.v2_code == "invalid_iam_token"
        assert raised.value.http_status == 401
    apps.set_disabled(app_id, True)
    with pytest.raises(AppUnavailable):
        keys.verify(key)


@pytest.mark.parametrize("name", ["prefix", "id", "bare id", "whole key"])
def test_revoke_by_any_name(database: Database, name: str) -> None:
    keys = V2Keys(database)
    app_id = AppRegistry(database).create("a").app.app_id
    created, other = keys.create(app_id), keys.create(app_id)
    key_id = created.prefix.removeprefix("bce-v3/")
    given = {
        "prefix": created.prefix,
        "id": key_id,
        "bare id": key_id.removeprefix("ALTAK-"),
        "whole key": created.api_key,
    }[name]
    assert key_id_of(given) == key_id
    assert keys.revoke(given) == 1
    assert keys.revoke(given) == 0  # already revoked
    with pytest.raises(InvalidIamToken):
        keys.verify(created.api_key)
    assert keys.verify(other.api_key).app_id == app_id


def test_a_revocation_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    """The server keeps what it found (`Database.read_one`) until the CLI's commit."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    server, cli = Database(url), Database(url)
    try:
        server.upgrade()
        app_id = AppRegistry(cli).create("a").app.app_id
        created = V2Keys(cli).create(app_id)
        assert V2Keys(server).verify(created.api_key).app_id == app_id
        assert V2Keys(server).verify(created.api_key).app_id == app_id  # kept
        V2Keys(cli).revoke(created.prefix)
        with pytest.raises(InvalidIamToken):
            V2Keys(server).verify(created.api_key)
    finally:
        server.close()
        cli.close()


def test_listing_shows_keys_by_prefix_not_tokens(database: Database) -> None:
    apps, keys = AppRegistry(database), V2Keys(database)
    app_id, other_app = apps.create("a").app.app_id, apps.create("b").app.app_id
    first, second = keys.create(app_id), keys.create(app_id)
    keys.create(other_app)
    BearerTokens(database).mint(app_id, 3600)
    keys.revoke(first.prefix)
    listed = keys.for_app(app_id)
    assert [(k.prefix, k.revoked) for k in listed] == [
        (first.prefix, True),
        (second.prefix, False),
    ]
    assert all(k.app_id == app_id and "/" not in k.prefix.removeprefix("bce-v3/") for k in listed)
