"""The gate's `verify`: V2 API keys and bearer tokens as `Authorization: Bearer`, and the V2
`appid` header, which must name the credential's app when it is sent."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from qfserve.access.app_keys import AppKeys
from qfserve.access.apps import App, AppRegistry
from qfserve.access.bearer_tokens import BearerTokens
from qfserve.access.gate import AccessGate, Credentials
from qfserve.access.iam_keys import IamKeys
from qfserve.access.quota import QuotaEnforcer, QuotaLimits
from qfserve.access.tokens import TokenIssuer
from qfserve.access.usage import UsageLedger
from qfserve.access.v2_keys import V2Keys
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import InvalidAppId, InvalidIamToken, QfserveError
from qfserve.metrics import Metrics
from qfserve.store.database import Database


@dataclass
class Setup:
    gate: AccessGate
    app_id: int
    other_app_id: int
    v2_key: str
    bearer_token: str
    access_token: str


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.upgrade()
    apps = AppRegistry(database)
    app_id, other_app_id = apps.create("a").app.app_id, apps.create("b").app.app_id
    tokens, v2_keys = TokenIssuer(database, 3600), V2Keys(database)
    gate = AccessGate(
        tokens,
        IamKeys(database, b"0" * 64),
        AppKeys(database),
        UsageLedger(database),
        Metrics(EngineRegistry({})),
        QuotaEnforcer(),
        QuotaLimits.from_config(),
        v2_keys=v2_keys,
        inline_lookups=True,
    )
    yield Setup(
        gate,
        app_id,
        other_app_id,
        v2_keys.create(app_id).api_key,
        BearerTokens(database).mint(app_id, 3600).token,
        tokens.issue(app_id).access_token,
    )
    database.close()


def verify(gate: AccessGate, bearer: str, app_id_header: str | None = None) -> App:
    credentials = Credentials(access_token=None, bearer=bearer, app_id_header=app_id_header)
    return anyio.run(gate.verify, credentials)


@pytest.mark.parametrize("kind", ["v2_key", "bearer_token"])
def test_v2_credentials_and_the_appid_header(setup: Setup, kind: str) -> None:
    credential = getattr(setup, kind)
    assert verify(setup.gate, credential).app_id == setup.app_id
    assert verify(setup.gate, credential, str(setup.app_id)).app_id == setup.app_id
    assert verify(setup.gate, credential, f" {setup.app_id} ").app_id == setup.app_id
    assert verify(setup.gate, credential, "").app_id == setup.app_id  # an empty header: not sent
    for wrong in [str(setup.other_app_id), "999", "app-1", "x"]:
        with pytest.raises(InvalidAppId) as raised:
            verify(setup.gate, credential, wrong)
        assert (raised.value.v2_code, raised.value.http_status) == ("invalid_appid", 401)


def test_the_appid_header_holds_for_every_credential(setup: Setup) -> None:
    assert verify(setup.gate, setup.access_token, str(setup.app_id)).app_id == setup.app_id
    with pytest.raises(InvalidAppId):
        verify(setup.gate, setup.access_token, str(setup.other_app_id))


def test_a_bad_credential_is_refused_before_the_appid_is_looked_at(setup: Setup) -> None:
    forged = setup.v2_key[:-1] + ("1" if setup.v2_key.endswith("0") else "0")
    with pytest.raises(InvalidIamToken):
        verify(setup.gate, forged, str(setup.other_app_id))
    with pytest.raises(QfserveError):
        verify(setup.gate, "bce-v3/whatever", str(setup.app_id))
