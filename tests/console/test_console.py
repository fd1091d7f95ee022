"""The console in headless Chromium against a live qfserve on the fake engine: what an operator
does, and what the chat routes then do. Each test signs in on its own and makes its own app."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.console.conftest import STREAMED, screenshot
from tests.console.console import (
    admin_get,
    chat,
    create_app,
    create_key,
    go,
    sign_in,
)
from tests.console.live import LiveServer
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Fetches not yet answered and handled: one counts until the task after its body was read, by
# when the console has done with it what it does.
COUNT_PENDING_FETCHES = """
window.pendingFetches = 0;
const originalFetch = window.fetch;
window.fetch = (...args) => {
  window.pendingFetches++;
  const settle = () => setTimeout(() => window.pendingFetches--, 0);
  return originalFetch(...args).then((reply) => {
    for (const how of ["text", "json"]) {
      const read = reply[how].bind(reply);
      reply[how] = () => read().finally(settle);
    }
    return reply;
  }, (error) => { settle(); throw error; });
};
"""


def test_sign_in_refuses_a_wrong_password_then_signs_in_and_out(
    page: Page, admin: tuple[str, str]
) -> None:
    name, password = admin
    page.goto("/console/")
    expect(page.get_by_role("heading")).to_have_text("Sign in to qfserve")
    screenshot(page, "sign-in")
    page.locator("input[name=name]").fill(name)
    page.locator("input[name=password]").fill(password + "x")
    page.locator("form button[type=submit]").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")

    sign_in(page, name, password)
    expect(page.locator("nav.side")).to_contain_text(f"Signed in as {name}")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading")).to_have_text("Sign in to qfserve")
    # The session is over on the server too, not only forgotten by the page.
    assert page.request.get("/admin/api/me").status == 401
    page.reload()
    expect(page.locator("input[name=password]")).to_be_visible()


def test_a_new_apps_copied_secret_gets_an_access_token(
    page: Page, live: LiveServer, admin: tuple[str, str]
) -> None:
    sign_in(page, *admin)
    app_id, api_key, secret_key = create_app(page, "shop")
    screenshot(page, "apps")
    token = httpx.post(
        f"{live.url}/oauth/2.0/token",
        params={
            "grant_type": "client_credentials",
            "client_id": api_key,
            "client_secret": secret_key,
        },
        timeout=30,
    )
    assert token.status_code == 200 and token.json()["access_token"], token.text
    # Shown once: the list and the app's page never show the Secret Key again.
    page.reload()
    expect(page.locator("main")).not_to_contain_text(secret_key)
    go(page, f"apps/{app_id}")
    expect(page.locator("main")).not_to_contain_text(secret_key)
    listed = admin_get(page, "/apps")
    assert secret_key not in str(listed)


def test_a_quota_set_in_the_editor_refuses_the_chat_route_past_it(
    page: Page, live: LiveServer, admin: tuple[str, str]
) -> None:
    sign_in(page, *admin)
    app_id, _, _ = create_app(page, "limited")
    key = create_key(page, app_id)
    go(page, f"apps/{app_id}")
    page.locator("input[name=quota-total]").fill("2")
    page.locator("input[type=checkbox][value=llama_2_7b]").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    screenshot(page, "app-keys-and-quota")
    assert admin_get(page, f"/apps/{app_id}")["quota"]["total"] == 2

    assert chat(live, key).status_code == 200
    assert chat(live, key).status_code == 200
    refused = chat(live, key)
    assert refused.status_code == 429, refused.text
    # The endpoint left unticked is refused whatever the quota.
    assert chat(live, key, endpoint="ernie_speed").status_code in (403, 429)


def test_the_usage_and_dashboard_plots_grow_with_real_chat_calls(
    page: Page, live: LiveServer, admin: tuple[str, str]
) -> None:
    sign_in(page, *admin)
    app_id, _, _ = create_app(page, "plotted")
    key = create_key(page, app_id)

    go(page, "usage")
    page.locator("select[name=app_id]").select_option(str(app_id))
    page.locator("select[name=by]").select_option("endpoint")
    charts = page.locator("main .charts")
    expect(charts).to_have_attribute("data-requests", "0")
    expect(charts.locator("figure")).to_have_count(0)

    for endpoint in ("llama_2_7b", "llama_2_7b", "ernie_speed"):
        assert chat(live, key, endpoint).status_code == 200
    # The ledger is written off the request path: the page shows the calls once they are in it.
    wait_until(
        lambda: admin_get(page, f"/usage?app_id={app_id}")["rows"], what="the calls in the ledger"
    )
    page.locator("select[name=by]").select_option("day")
    page.locator("select[name=by]").select_option("endpoint")
    expect(charts).to_have_attribute("data-requests", "3")
    expect(charts.locator("figure")).to_have_count(2)
    expect(charts.locator("figure").first.locator("rect")).to_have_count(2)
    screenshot(page, "usage")

    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    lines = download.value.path().read_text().splitlines()
    assert lines[0] == "endpoint,requests,prompt_tokens,completion_tokens,total_tokens"
    counted = [line.split(",")[:2] for line in lines[1:]]
    assert counted == [["ernie_speed", "1"], ["llama_2_7b", "2"]]

    go(page, "dashboard")
    # Drawn once the page's first call for the series has answered.
    expect(page.locator("main .charts")).to_have_attribute("data-requests", re.compile(r"^\d+$"))
    requests_before = int(page.locator("main .charts").get_attribute("data-requests") or "0")
    assert requests_before >= 3
    assert chat(live, key).status_code == 200
    wait_until(
        lambda: admin_get(page, "/stats/timeseries")["series"][0]["requests"][-1] > 0,
        what="the call in the time series",
    )
    page.locator("select[name=range]").select_option("6h")
    expect(page.locator("main .charts")).to_have_attribute(
        "data-requests", str(requests_before + 1)
    )
    expect(page.locator("main .charts figure")).to_have_count(4)


def test_the_playground_streams_an_answer_through_the_chat_route(
    page: Page, live: LiveServer, admin: tuple[str, str]
) -> None:
    sign_in(page, *admin)
    app_id, _, _ = create_app(page, "playground")
    go(page, "playground")
    page.locator("select[name=app_id]").select_option(str(app_id))
    page.locator("select[name=endpoint]").select_option("ernie_speed")
    page.locator("textarea[name=question]").fill("What is the capital of Japan?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".answer")
    # Seen in pieces: some words while the stream is still open, then the whole answer.
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(answer).to_contain_text("Tokyo")
    assert answer.get_attribute("data-state") == "streaming"
    assert answer.inner_text() != STREAMED.answer
    expect(answer).to_have_attribute("data-state", "done", timeout=30000)
    expect(answer).to_have_text(STREAMED.answer)
    expect(page.get_by_role("status")).to_contain_text("first token after")
    screenshot(page, "playground")
    # It went through the real route: the app's usage has the call.
    wait_until(
        lambda: admin_get(page, f"/usage?app_id={app_id}&by=endpoint")["rows"],
        what="the playground's call in the ledger",
    )
    rows = admin_get(page, f"/usage?app_id={app_id}&by=endpoint")["rows"]
    assert [(r["group"], r["requests"]) for r in rows] == [("ernie_speed", 1)]


def test_the_request_log_filters_by_status(
    page: Page, live: LiveServer, admin: tuple[str, str]
) -> None:
    sign_in(page, *admin)
    app_id, _, _ = create_app(page, "logged")
    key = create_key(page, app_id)
    go(page, f"apps/{app_id}")
    page.locator("input[name=quota-total]").fill("1")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    assert chat(live, key).status_code == 200
    assert chat(live, key).status_code == 429
    wait_until(
        lambda: len(admin_get(page, f"/requests?app_id={app_id}")["rows"]) == 2,
        what="both calls in the request log",
    )
    go(page, "requests")
    page.locator("select[name=app_id]").select_option(str(app_id))
    rows = page.locator("tbody tr[data-request-id]")
    expect(rows).to_have_count(2)
    page.locator("input[name=status]").fill("error")
    page.locator("input[name=status]").dispatch_event("change")
    expect(rows).to_have_count(1)
    expect(rows.first).not_to_contain_text("ok")
    page.locator("input[name=status]").fill("ok")
    page.locator("input[name=status]").dispatch_event("change")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ok")
    page.locator("input[name=status]").fill("")
    page.locator("input[name=status]").dispatch_event("change")
    screenshot(page, "requests")


def test_the_endpoints_page_shows_each_endpoints_health(page: Page, admin: tuple[str, str]) -> None:
    sign_in(page, *admin)
    go(page, "endpoints")
    for name in ("llama_2_7b", "ernie_speed"):
        card = page.locator(f'[data-endpoint="{name}"]')
        expect(card).to_contain_text("ready")
    screenshot(page, "endpoints")


def test_the_endpoints_page_shows_remote_replicas_health(
    page: Page, admin: tuple[str, str]
) -> None:
    # A remote endpoint needs upstream servers; its figures, as the admin API gives them, are
    # enough for what the page does with them.
    remote = {
        "name": "ernie_speed",
        "service_name": "ERNIE-Speed-8K",
        "engine": "remote",
        "ready": True,
        "running": 3,
        "waiting": 1,
        "prompt_tokens": 5200,
        "cached_prompt_tokens": 1300,
        "generated_tokens": 9100,
        "replicas": [
            {
                "url": "http://10.0.0.5:8000",
                "healthy": True,
                "outstanding": 2,
                "requests": 40,
                "failures": 0,
            },
            {
                "url": "http://10.0.0.6:8000",
                "healthy": False,
                "outstanding": 0,
                "requests": 12,
                "failures": 5,
            },
        ],
    }
    page.route(
        "**/admin/api/endpoints",
        lambda route: route.fulfill(json={"status": "ok", "endpoints": [remote]}),
    )
    sign_in(page, *admin)
    go(page, "endpoints")
    rows = page.locator('[data-endpoint="ernie_speed"] tbody tr')
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="10.0.0.5")).to_contain_text("healthy")
    expect(rows.filter(has_text="10.0.0.6")).to_contain_text("unhealthy")
    expect(rows.filter(has_text="10.0.0.6").locator("td.num")).to_have_text(["0", "12", "5"])
    screenshot(page, "endpoints-remote")


def test_chinese_is_the_default_for_a_chinese_browser_and_the_switch_is_remembered(
    browser: Browser, live: LiveServer, admin: tuple[str, str]
) -> None:
    context = browser.new_context(base_url=live.url, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto("/console/")
        expect(page.get_by_role("heading")).to_have_text("登录 qfserve")
        page.locator("select.language").select_option("en")
        expect(page.get_by_role("heading")).to_have_text("Sign in to qfserve")
        page.reload()
        expect(page.get_by_role("heading")).to_have_text("Sign in to qfserve")
        sign_in(page, *admin)
        expect(page.locator("nav.side")).to_contain_text("Dashboard")
        page.locator("select.language").select_option("zh-CN")
        expect(page.locator("nav.side")).to_contain_text("概览")
        expect(page.locator("main h1")).to_have_text("概览")
        screenshot(page, "dashboard-zh-CN")
        page.reload()
        expect(page.locator("nav.side")).to_contain_text("退出登录")
    finally:
        context.close()


def test_an_idle_console_signs_out(page: Page, admin: tuple[str, str]) -> None:
    page.clock.install()
    sign_in(page, *admin)
    idle_seconds = admin_get(page, "/me")["idle_timeout_seconds"]
    # Fast-forwarded: timers due meanwhile (the dashboard's refresh) fire once, not each time.
    page.clock.fast_forward((idle_seconds - 5) * 1000)
    expect(page.locator("main[data-page=dashboard]")).to_be_visible()
    page.clock.fast_forward(10_000)
    expect(page.get_by_role("alert")).to_have_text(re.compile("without activity"))
    assert page.request.get("/admin/api/me").status == 401


def test_a_session_ended_on_the_server_brings_back_the_sign_in_page(
    page: Page, admin: tuple[str, str]
) -> None:
    sign_in(page, *admin)
    csrf = admin_get(page, "/me")["csrf_token"]
    # Ended behind the console's back (as by the server's idle timeout, or another tab).
    assert page.request.post("/admin/api/logout", headers={"X-CSRF-Token": csrf}).status == 204
    # The next call finds out: this move to another page's, or the dashboard's own refresh.
    page.evaluate("location.hash = '#/apps'")
    expect(page.get_by_role("alert")).to_have_text("Your session has ended. Please sign in again.")
    expect(page.locator("input[name=password]")).to_be_visible()


def test_a_late_answer_for_an_older_filter_does_not_replace_the_newer_one(
    page: Page, live: LiveServer, admin: tuple[str, str]
) -> None:
    page.add_init_script(COUNT_PENDING_FETCHES)
    sign_in(page, *admin)
    app_id, _, _ = create_app(page, "filtered")
    assert chat(live, create_key(page, app_id), "ernie_speed").status_code == 200
    wait_until(lambda: admin_get(page, f"/usage?app_id={app_id}")["rows"], what="the call")
    go(page, "usage")
    page.locator("select[name=app_id]").select_option(str(app_id))
    first_cell = page.locator("main tbody tr td").first
    expect(first_cell).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d$"))
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route(re.compile(r"/admin/api/usage\?by=user"), hold)
    page.locator("select[name=by]").select_option("user")
    # Polled through Playwright, which hands the route over only while it is called.
    for _ in range(500):
        if held:
            break
        page.wait_for_timeout(20)
    assert held, "the request was not held"
    page.locator("select[name=by]").select_option("endpoint")
    expect(first_cell).to_have_text("ernie_speed")
    with page.expect_response(re.compile(r"by=user")):
        held[0].continue_()
    # The older answer has been read and handled: the page still shows the newer one's rows.
    page.wait_for_function("window.pendingFetches === 0")
    expect(first_cell).to_have_text("ernie_speed")
    assert page.get_by_role("link", name="Export CSV").get_attribute("href") == (
        f"/admin/api/usage.csv?by=endpoint&app_id={app_id}"
    )


def test_the_audit_log_shows_what_the_admin_did(page: Page, admin: tuple[str, str]) -> None:
    sign_in(page, *admin)
    app_id, _, _ = create_app(page, "audited")
    go(page, "audit")
    page.locator("input[name=action]").fill("app.create")
    page.locator("input[name=action]").dispatch_event("change")
    created = page.locator("tbody tr").filter(has_text=f"app:{app_id}")
    expect(created).to_have_count(1)
    expect(created).to_contain_text(admin[0])
    expect(page.locator("tbody tr").filter(has_text="login")).to_have_count(0)
    screenshot(page, "audit")
