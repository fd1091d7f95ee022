// Streams an answer from an endpoint through the real chat route, with one app's credential: a
// short-lived V2 token the admin API hands out, or a key pasted by hand (sk-qf-... goes to the
// OpenAI route, anything else to V2's).

import { get, post } from "../api.js";
import { clear, fill, h } from "../dom.js";
import { t } from "../i18n.js";

export async function render(main) {
  const [{ apps }, server] = await Promise.all([get("/apps"), get("/server")]);
  const app = h("select", { name: "app_id" }, apps.map((a) => h("option", { value: a.app_id, disabled: a.disabled }, `${a.name} (#${a.app_id})`)));
  const endpoint = h("select", { name: "endpoint" }, server.endpoints.map((name) => h("option", { value: name }, name)));
  const key = h("input", { name: "key", type: "password", autocomplete: "off", placeholder: t("playground.key_placeholder"), size: 36 });
  const system = h("textarea", { name: "system", rows: 2, placeholder: t("playground.system_placeholder") });
  const question = h("textarea", { name: "question", rows: 4, placeholder: t("playground.question_placeholder") }, "What is the capital of Japan?");
  const maxTokens = h("input", { name: "max_tokens", type: "number", min: 1, value: 256 });
  const answer = h("div", { class: "answer", "aria-live": "polite", "data-state": "idle" });
  const meta = h("p", { class: "muted", role: "status" });
  const send = h("button", { type: "submit" }, t("playground.send"));
  const stop = h("button", { type: "button", class: "secondary", disabled: true }, t("playground.stop"));
  let token = null; // {app_id, token, expires_at, chat_path}
  let running = null;

  if (!apps.length) {
    fill(main, h("h1", {}, t("playground.title")), h("p", {}, t("playground.no_apps"), " ", h("a", { href: "#/apps" }, t("apps.title"))));
    return;
  }
  fill(main, 
    h("h1", {}, t("playground.title")),
    h(
      "form",
      {
        class: "card",
        onsubmit: (event) => {
          event.preventDefault();
          ask();
        },
      },
      h(
        "div",
        { class: "toolbar" },
        h("label", {}, t("usage.app"), app),
        h("label", {}, t("requests.endpoint"), endpoint),
        h("label", {}, t("playground.max_tokens"), maxTokens),
        h("label", {}, t("playground.key"), key),
      ),
      h("p", { class: "muted" }, t("playground.key_help")),
      h("label", { class: "wide" }, t("playground.system"), system),
      h("label", { class: "wide" }, t("playground.question"), question),
      h("div", { class: "row" }, send, stop),
    ),
    h("h2", {}, t("playground.answer")),
    answer,
    meta,
  );
  stop.addEventListener("click", () => running && running.abort());

  async function credential() {
    const pasted = key.value.trim();
    if (pasted) return { secret: pasted, path: pasted.startsWith("sk-") ? "/v1/chat/completions" : "/v2/chat/completions" };
    const appId = Number(app.value);
    const fresh = token && token.app_id === appId && token.expires_at - 30 > Date.now() / 1000;
    if (!fresh) token = await post(`/apps/${appId}/playground-token`, {});
    return { secret: token.token, path: token.chat_path };
  }

  async function ask() {
    clear(answer);
    answer.dataset.state = "streaming";
    meta.textContent = "";
    send.disabled = true;
    stop.disabled = false;
    running = new AbortController();
    const started = performance.now();
    let firstToken = null;
    try {
      const { secret, path } = await credential();
      const messages = [];
      if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
      messages.push({ role: "user", content: question.value });
      const reply = await fetch(path, {
        method: "POST",
        headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
        body: JSON.stringify({
          model: endpoint.value,
          messages,
          stream: true,
          stream_options: { include_usage: true },
          max_tokens: Number(maxTokens.value) || undefined,
        }),
        signal: running.signal,
      });
      if (!reply.ok) {
        const text = await reply.text();
        let error;
        try {
          error = JSON.parse(text).error;
        } catch {
          error = null;
        }
        throw new Error(`${reply.status}: ${error ? error.message || error.code : text}`);
      }
      let usage = null;
      for await (const event of events(reply.body)) {
        if (event === "[DONE]") break;
        const chunk = JSON.parse(event);
        if (chunk.error) throw new Error(chunk.error.message || chunk.error.code);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (firstToken === null) firstToken = performance.now();
          answer.append(delta.content);
        }
      }
      answer.dataset.state = "done";
      const parts = [];
      if (firstToken !== null) parts.push(t("playground.first_token", { ms: Math.round(firstToken - started) }));
      parts.push(t("playground.total_time", { ms: Math.round(performance.now() - started) }));
      if (usage) parts.push(t("playground.usage", { prompt: usage.prompt_tokens, completion: usage.completion_tokens }));
      meta.textContent = parts.join(" · ");
    } catch (error) {
      answer.dataset.state = error.name === "AbortError" ? "stopped" : "error";
      meta.className = error.name === "AbortError" ? "muted" : "error";
      meta.textContent = error.name === "AbortError" ? t("playground.stopped") : error.message;
      return;
    } finally {
      send.disabled = false;
      stop.disabled = true;
      running = null;
    }
    meta.className = "muted";
  }
}

// The `data:` payloads of a server-sent event stream, as they arrive.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}
