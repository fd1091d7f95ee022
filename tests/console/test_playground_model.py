"""The playground on the real bundled model: an answer streamed through the chat route into the
page, piece by piece."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Browser, expect

from tests.console.console import go, sign_in
from tests.servers import Server, qfserve

pytestmark = [pytest.mark.browser, pytest.mark.model, pytest.mark.slow]

# How long the answer's text was each time the page changed it.
WATCH_ANSWER = """() => {
  window.answerLengths = [];
  const answer = document.querySelector(".answer");
  new MutationObserver(() => window.answerLengths.push(answer.textContent.length))
    .observe(answer, {childList: true, subtree: true, characterData: true});
}"""


def test_the_playground_streams_the_bundled_models_answer(browser: Browser, server: Server) -> None:
    made = json.loads(qfserve("admin", "create", "model-ops", "--json", env=server.env).stdout)
    app = server.create_app("playground-model")
    context = browser.new_context(base_url=server.url, locale="en-US")
    try:
        page = context.new_page()
        sign_in(page, made["name"], made["password"])
        go(page, "playground")
        page.locator("select[name=app_id]").select_option(str(app["app_id"]))
        page.locator("select[name=endpoint]").select_option("llama_2_7b")
        page.locator("input[name=max_tokens]").fill("40")
        page.locator("textarea[name=question]").fill("What is the capital of Japan?")
        page.evaluate(WATCH_ANSWER)
        page.get_by_role("button", name="Send").click()
        answer = page.locator(".answer")
        expect(answer).to_have_attribute("data-state", "done", timeout=120_000)
        text = answer.inner_text()
        assert text.strip(), "an empty answer"
        lengths = [n for n in page.evaluate("window.answerLengths") if n]
        assert len(set(lengths)) > 1, f"the answer came in one piece: {lengths}"
        assert max(lengths) == len(answer.evaluate("a => a.textContent"))
        expect(page.get_by_role("status")).to_contain_text("completion tokens")
    finally:
        context.close()
