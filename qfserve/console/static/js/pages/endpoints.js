// Endpoints and their replicas, with health; refreshed while the page is open.

import { get } from "../api.js";
import { fill, formatNumber, h } from "../dom.js";
import { t } from "../i18n.js";

const REFRESH_MS = 5000;

function health(ok) {
  return ok ? h("span", { class: "badge ok" }, t("endpoints.ready")) : h("span", { class: "badge bad" }, t("endpoints.not_ready"));
}

export async function render(main) {
  const overall = h("p", {});
  const list = h("div");
  fill(main, h("h1", {}, t("endpoints.title")), overall, list);

  async function refresh(background = false) {
    const data = await get("/endpoints", { background });
    fill(overall, t("endpoints.server"), " ", h("span", { class: data.status === "ok" ? "badge ok" : "badge bad" }, t(`endpoints.status.${data.status}`)));
    fill(list, data.endpoints.map(card));
  }

  await refresh();
  const timer = setInterval(() => refresh(true).catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}

function card(endpoint) {
  const figures = [
    ["endpoints.running", endpoint.running],
    ["endpoints.waiting", endpoint.waiting],
    ["endpoints.prompt_tokens", endpoint.prompt_tokens],
    ["endpoints.cached_prompt_tokens", endpoint.cached_prompt_tokens],
    ["endpoints.generated_tokens", endpoint.generated_tokens],
  ];
  return h(
    "div",
    { class: "card", "data-endpoint": endpoint.name },
    h("h2", { class: "row" }, endpoint.name, health(endpoint.ready)),
    h("p", { class: "muted" }, `${endpoint.service_name} · ${t(`endpoints.engine.${endpoint.engine}`)}`),
    h("div", { class: "totals" }, figures.map(([key, value]) => h("div", {}, h("div", { class: "muted" }, t(key)), h("div", { class: "value" }, formatNumber(value))))),
    endpoint.replicas.length
      ? h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            {},
            h(
              "thead",
              {},
              h("tr", {}, h("th", {}, t("endpoints.replica")), h("th", {}, t("endpoints.health")), ["endpoints.outstanding", "endpoints.requests", "endpoints.failures"].map((k) => h("th", { class: "num" }, t(k)))),
            ),
            h(
              "tbody",
              {},
              endpoint.replicas.map((r) =>
                h(
                  "tr",
                  {},
                  h("td", {}, h("code", {}, r.url)),
                  h("td", {}, r.healthy ? h("span", { class: "badge ok" }, t("endpoints.healthy")) : h("span", { class: "badge bad" }, t("endpoints.unhealthy"))),
                  [r.outstanding, r.requests, r.failures].map((v) => h("td", { class: "num" }, formatNumber(v))),
                ),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, t("endpoints.in_process")),
  );
}
