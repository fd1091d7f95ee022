"""The dashboard with an hour of traffic behind it, for the README's picture
(build/console-screenshots/dashboard.png, copied to docs/console.png by hand). The hour is
written into the usage ledger and the request log directly: a test cannot wait an hour."""

from __future__ import annotations

import json
import math
import random
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Page, expect

from qfserve.store.database import Database
from qfserve.store.schema import RequestLogRow, UsageRow
from tests.console.conftest import ENDPOINTS, screenshot
from tests.console.console import sign_in
from tests.console.live import LiveServer, live_server
from tests.fake_engine import FakeEngine

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("traffic"), FakeEngine(), ENDPOINTS) as server:
        yield server


def an_hour_of_traffic(live: LiveServer, app_id: int) -> int:
    """A busy hour on two endpoints, one row per request, each minute's count following a slow
    wave; a few requests refused past a per-minute quota. Returns the number of requests."""
    chance = random.Random(17)
    now = datetime.now(UTC)
    rows: list[dict[str, object]] = []
    for minute in range(58, 0, -1):
        start = now - timedelta(minutes=minute)
        for n, endpoint in enumerate(ENDPOINTS):
            wave = 6 + 4 * math.sin(minute / 9 + n * 2)
            for _ in range(max(0, round(wave + chance.uniform(-2, 2)) - 3 * n)):
                refused = chance.random() < 0.04
                prompt = chance.randint(20, 400)
                rows.append(
                    {
                        "request_id": secrets.token_hex(8),
                        "app_id": app_id,
                        "endpoint": endpoint,
                        "user_id": f"user-{chance.randint(1, 9)}",
                        "prompt_tokens": prompt,
                        "completion_tokens": 0 if refused else chance.randint(30, 300),
                        "latency_ms": 2 if refused else chance.randint(300, 1600) + 400 * n,
                        "error_code": 336501 if refused else 0,
                        "safety_category": None,
                        "created_at": start + timedelta(seconds=chance.uniform(0, 59)),
                    }
                )
    database = Database(live.settings.resolved_database_url)
    try:
        with database.session() as session:
            session.add_all([UsageRow(**row) for row in rows])
            session.add_all([RequestLogRow(**row) for row in rows])
    finally:
        database.close()
    return len(rows)


def test_the_dashboard_with_an_hour_of_traffic(page: Page, live: LiveServer) -> None:
    app = json.loads(live.cli("app", "create", "--name", "storefront", "--json"))
    requests = an_hour_of_traffic(live, int(app["app_id"]))
    sign_in(page, "ops", live.create_admin("ops"))
    charts = page.locator("main .charts")
    expect(charts).to_have_attribute("data-requests", str(requests))
    expect(charts.locator("figure path.series")).to_have_count(3 + 4 + 3 + 4)
    screenshot(page, "dashboard")
