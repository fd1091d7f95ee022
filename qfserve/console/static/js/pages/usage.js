// Usage by day, endpoint, user or app, as the `qfserve usage` command groups it; CSV export.

import { API_BASE, get, query } from "../api.js";
import { barChart, lineChart } from "../chart.js";
import { clear, fill, formatNumber, h } from "../dom.js";
import { t } from "../i18n.js";

const GROUPS = ["day", "endpoint", "user", "app"];
const COLUMNS = ["requests", "prompt_tokens", "completion_tokens", "total_tokens"];

export async function render(main) {
  const { apps } = await get("/apps?include_deleted=true");
  const by = h("select", { name: "by" }, GROUPS.map((g) => h("option", { value: g }, t(`usage.by.${g}`))));
  const app = h(
    "select",
    { name: "app_id" },
    h("option", { value: "" }, t("usage.all_apps")),
    apps.map((a) => h("option", { value: a.app_id }, `${a.name} (#${a.app_id})`)),
  );
  const since = h("input", { name: "since", type: "date" });
  const until = h("input", { name: "until", type: "date" });
  const csv = h("a", { class: "button-link", download: "" }, t("usage.csv"));
  const charts = h("div", { class: "charts" });
  const body = h("tbody");
  const head = h("tr");
  for (const control of [by, app, since, until]) control.addEventListener("change", load);
  fill(main, 
    h("h1", {}, t("usage.title")),
    h(
      "div",
      { class: "toolbar" },
      h("label", {}, t("usage.group"), by),
      h("label", {}, t("usage.app"), app),
      h("label", {}, t("usage.since"), since),
      h("label", {}, t("usage.until"), until),
      csv,
    ),
    charts,
    h("h2", {}, t("usage.table")),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), body)),
  );

  // Filters changed quickly send several requests: only the latest one's answer is shown.
  let latest = 0;

  async function load() {
    const asked = ++latest;
    // The date picked as "until" is included: the API's range ends before its `until`.
    const search = query({ by: by.value, app_id: app.value, since: since.value, until: dayAfter(until.value) });
    const { rows } = await get(`/usage${search}`);
    if (asked !== latest) return;
    csv.href = `${API_BASE}/usage.csv${search}`;
    const name = (row) => groupName(by.value, row.group, apps);
    fill(head, h("th", {}, t(`usage.by.${by.value}`)), COLUMNS.map((c) => h("th", { class: "num" }, t(`usage.${c}`))));
    fill(body, 
      rows.map((row) => h("tr", {}, h("td", {}, name(row)), COLUMNS.map((c) => h("td", { class: "num" }, formatNumber(row[c]))))),
    );
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, t("usage.none"))));
    clear(charts);
    if (by.value === "day" && rows.length) {
      const times = rows.map((row) => Date.parse(`${row.group}T00:00:00Z`));
      const label = (when) => when.toLocaleDateString([], { month: "numeric", day: "numeric", timeZone: "UTC" });
      charts.append(
        lineChart({ title: t("usage.requests"), times, label, series: [{ name: t("usage.requests"), values: rows.map((r) => r.requests) }] }),
        lineChart({
          title: t("usage.total_tokens"),
          times,
          label,
          series: [
            { name: t("usage.prompt_tokens"), values: rows.map((r) => r.prompt_tokens) },
            { name: t("usage.completion_tokens"), values: rows.map((r) => r.completion_tokens) },
          ],
        }),
      );
    } else if (rows.length) {
      charts.append(
        barChart({ title: t("usage.requests"), rows: rows.map((r) => ({ label: name(r), value: r.requests })) }),
        barChart({ title: t("usage.total_tokens"), rows: rows.map((r) => ({ label: name(r), value: r.total_tokens })) }),
      );
    }
    charts.dataset.requests = String(rows.reduce((total, r) => total + r.requests, 0));
  }

  await load();
}

function groupName(by, group, apps) {
  if (by === "user") return group === "" ? t("usage.no_user") : group;
  if (by === "app") {
    const app = apps.find((a) => String(a.app_id) === group);
    return app ? `${app.name} (#${group})` : `#${group}`;
  }
  return group;
}

function dayAfter(date) {
  if (!date) return "";
  const next = new Date(`${date}T00:00:00Z`);
  next.setUTCDate(next.getUTCDate() + 1);
  return next.toISOString().slice(0, 10);
}
