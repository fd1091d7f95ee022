"""Steps through the console as an operator takes them, and the chat calls a client makes."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.console.live import LiveServer


def sign_in(page: Page, name: str, password: str) -> None:
    page.goto("/console/")
    page.locator("input[name=name]").fill(name)
    page.locator("input[name=password]").fill(password)
    page.locator("form button[type=submit]").click()
    expect(page.locator("main[data-page=dashboard]")).to_be_visible()


def go(page: Page, route: str) -> None:
    page.goto(f"/console/#/{route}")
    expect(page.locator(f"main[data-page={route.split('/')[0]}]")).to_be_visible()
    expect(page.locator("main .loading")).to_have_count(0)


def copied_secret(page: Page, label: str) -> str:
    """Clicks the copy button beside the shown secret `label` and reads the clipboard."""
    row = page.locator(".secret div").filter(has=page.locator(f'code[data-secret="{label}"]'))
    row.get_by_role("button").click()
    expect(row.get_by_role("button")).to_have_text(re.compile("Copied|已复制"))
    copied = page.evaluate("navigator.clipboard.readText()")
    assert isinstance(copied, str)
    assert copied == row.locator("code").inner_text()
    return copied


def create_app(page: Page, name: str) -> tuple[int, str, str]:
    """A new app made on the apps page: its id, and the API Key and Secret Key copied from it."""
    go(page, "apps")
    page.locator("input[name=name]").fill(name)
    page.get_by_role("button", name="Create app").click()
    expect(page.locator(".secret")).to_be_visible()
    api_key = copied_secret(page, "API Key")
    secret_key = copied_secret(page, "Secret Key")
    row = page.locator("tbody tr").filter(has_text=api_key)
    app_id = int(row.get_attribute("data-app-id") or "0")
    assert app_id > 0
    return app_id, api_key, secret_key


def create_key(page: Page, app_id: int, kind: str = "app_key") -> str:
    """A new key of the app, made on its page and copied from there."""
    go(page, f"apps/{app_id}")
    page.locator("select[name=kind]").select_option(kind)
    page.get_by_role("button", name="Create key").click()
    label = {"app_key": "OpenAI app key (sk-qf-…)", "v2_key": "Qianfan V2 API key (bce-v3/…)"}
    return copied_secret(page, label[kind])


def chat(live: LiveServer, key: str, endpoint: str = "llama_2_7b") -> httpx.Response:
    """One OpenAI-shaped chat call with an app key, as any client makes it."""
    return httpx.post(
        f"{live.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": endpoint, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )


def admin_get(page: Page, path: str) -> Any:
    """A GET of the admin API with the page's session cookie."""
    reply = page.request.get(f"/admin/api{path}")
    assert reply.ok, reply.status
    return reply.json()
