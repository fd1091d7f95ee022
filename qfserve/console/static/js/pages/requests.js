// The request log: one row per chat request, newest first, filtered and paged.

import { get, query } from "../api.js";
import { clear, fill, formatNumber, formatTime, h } from "../dom.js";
import { t } from "../i18n.js";

const PAGE = 50;

export async function render(main) {
  const [{ apps }, server] = await Promise.all([get("/apps?include_deleted=true"), get("/server")]);
  const app = h(
    "select",
    { name: "app_id" },
    h("option", { value: "" }, t("usage.all_apps")),
    apps.map((a) => h("option", { value: a.app_id }, `${a.name} (#${a.app_id})`)),
  );
  const endpoint = h(
    "select",
    { name: "endpoint" },
    h("option", { value: "" }, t("requests.all_endpoints")),
    server.endpoints.map((name) => h("option", { value: name }, name)),
  );
  const user = h("input", { name: "user_id", placeholder: "user_id" });
  const status = h("input", { name: "status", list: "request-statuses", placeholder: t("requests.status_any") });
  const statuses = h(
    "datalist",
    { id: "request-statuses" },
    h("option", { value: "ok" }, t("requests.status_ok")),
    h("option", { value: "error" }, t("requests.status_error")),
  );
  const since = h("input", { name: "since", type: "datetime-local" });
  const until = h("input", { name: "until", type: "datetime-local" });
  const body = h("tbody");
  const more = h("button", { class: "secondary", hidden: true, onclick: () => load(false) }, t("requests.more"));
  const message = h("p", { class: "error", role: "alert" });
  let nextBeforeId = null;
  for (const control of [app, endpoint, status, since, until]) control.addEventListener("change", () => load(true));
  user.addEventListener("change", () => load(true));

  const textNote = server.request_log.record_text ? "" : t("requests.no_text");
  fill(main, 
    h("h1", {}, t("requests.title")),
    h(
      "div",
      { class: "toolbar" },
      h("label", {}, t("usage.app"), app),
      h("label", {}, t("requests.endpoint"), endpoint),
      h("label", {}, "user_id", user),
      h("label", {}, t("requests.status"), status, statuses),
      h("label", {}, t("usage.since"), since),
      h("label", {}, t("usage.until"), until),
    ),
    h("p", { class: "muted" }, t("requests.retention", { days: server.request_log.retention_days || "∞" }), " ", textNote),
    message,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            [t("requests.time"), t("usage.app"), t("requests.endpoint"), "user_id", t("requests.status")].map((c) => h("th", {}, c)),
            [t("usage.prompt_tokens"), t("usage.completion_tokens"), t("requests.latency")].map((c) => h("th", { class: "num" }, c)),
            h("th", {}, t("requests.safety")),
            h("th", {}, t("requests.text")),
          ),
        ),
        body,
      ),
    ),
    h("p", {}, more),
  );

  // A local time typed in the filter, as the UTC instant the API expects.
  const instant = (value) => (value ? new Date(value).toISOString() : "");

  // Filters changed quickly send several requests: only the latest one's answer is shown.
  let latest = 0;

  async function load(fresh) {
    const asked = ++latest;
    message.textContent = "";
    const search = query({
      app_id: app.value,
      endpoint: endpoint.value,
      user_id: user.value.trim(),
      status: status.value.trim(),
      since: instant(since.value),
      until: instant(until.value),
      limit: PAGE,
      before_id: fresh ? "" : nextBeforeId,
    });
    let page;
    try {
      page = await get(`/requests${search}`);
    } catch (error) {
      if (asked !== latest) return;
      if (error.status === 400) {
        message.textContent = error.message;
        return;
      }
      throw error;
    }
    if (asked !== latest) return;
    if (fresh) clear(body);
    body.append(...page.rows.map(row));
    if (fresh && !page.rows.length) body.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, t("requests.none"))));
    nextBeforeId = page.next_before_id;
    more.hidden = nextBeforeId === null;
  }

  function row(entry) {
    const ok = entry.status === 0;
    const text = [entry.question, entry.answer].filter((part) => part !== null && part !== undefined);
    return h(
      "tr",
      { "data-request-id": entry.request_id },
      h("td", {}, formatTime(entry.created_at)),
      h("td", {}, appName(apps, entry.app_id)),
      h("td", {}, entry.endpoint),
      h("td", {}, entry.user_id ?? ""),
      h("td", {}, h("span", { class: ok ? "badge ok" : "badge bad" }, ok ? t("requests.status_ok") : entry.status)),
      h("td", { class: "num" }, formatNumber(entry.prompt_tokens)),
      h("td", { class: "num" }, formatNumber(entry.completion_tokens)),
      h("td", { class: "num" }, `${formatNumber(entry.latency_ms)} ms`),
      h("td", {}, entry.safety_category ?? ""),
      h(
        "td",
        {},
        text.length
          ? h("details", {}, h("summary", {}, t("requests.show")), h("div", { class: "answer" }, text.join("\n\n—\n\n")))
          : "",
      ),
    );
  }

  await load(true);
}

function appName(apps, appId) {
  const app = apps.find((a) => a.app_id === appId);
  return app ? `${app.name} (#${appId})` : `#${appId}`;
}
