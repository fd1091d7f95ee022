// Requests, tokens, errors and latency over time, all endpoints together and each on its own.

import { get, query } from "../api.js";
import { lineChart } from "../chart.js";
import { fill, formatNumber, h } from "../dom.js";
import { t } from "../i18n.js";

const RANGES = [
  { key: "1h", seconds: 3600, bucket: 60 },
  { key: "6h", seconds: 6 * 3600, bucket: 300 },
  { key: "24h", seconds: 86400, bucket: 1200 },
  { key: "7d", seconds: 7 * 86400, bucket: 3 * 3600 },
];
const REFRESH_MS = 10000;

const sum = (values) => values.reduce((total, v) => total + (v || 0), 0);
const plus = (a, b) => a.map((v, i) => (v || 0) + (b[i] || 0));

export async function render(main) {
  let range = RANGES[0];
  const charts = h("div", { class: "charts" });
  const totals = h("div", { class: "totals" });
  const picker = h(
    "select",
    {
      name: "range",
      onchange: (event) => {
        range = RANGES.find((r) => r.key === event.target.value);
        refresh();
      },
    },
    RANGES.map((r) => h("option", { value: r.key }, t(`dashboard.range.${r.key}`))),
  );
  fill(main, 
    h("h1", {}, t("dashboard.title")),
    h("div", { class: "toolbar" }, h("label", {}, t("dashboard.range"), picker)),
    totals,
    charts,
  );

  // A period picked while the last one loads, or the timer's refresh: only the latest is drawn.
  let latest = 0;

  async function refresh(background = false) {
    const asked = ++latest;
    const until = new Date();
    const since = new Date(until.getTime() - range.seconds * 1000);
    const data = await get(
      "/stats/timeseries" +
        query({ since: since.toISOString(), until: until.toISOString(), bucket_seconds: range.bucket }),
      { background },
    );
    if (asked === latest) draw(data);
  }

  function draw(data) {
    const times = data.buckets.map((b) => Date.parse(b));
    const [all, ...endpoints] = data.series;
    const label =
      range.seconds > 86400
        ? (when) => when.toLocaleDateString([], { month: "numeric", day: "numeric" })
        : undefined;
    const perEndpoint = (field) => endpoints.map((s) => ({ name: s.endpoint, values: s[field] }));
    const requests = sum(all.requests);
    const errors = sum(all.errors);
    const tokens = sum(all.prompt_tokens) + sum(all.completion_tokens);
    fill(totals, 
      total("dashboard.requests", formatNumber(requests)),
      total("dashboard.tokens", formatNumber(tokens)),
      total("dashboard.errors", formatNumber(errors)),
      total("dashboard.error_rate", requests ? `${((100 * errors) / requests).toFixed(1)}%` : "–"),
    );
    fill(charts, 
      lineChart({
        title: t("dashboard.chart.requests"),
        times,
        label,
        series: [{ name: t("dashboard.all_endpoints"), values: all.requests }, ...perEndpoint("requests")],
      }),
      lineChart({
        title: t("dashboard.chart.tokens"),
        times,
        label,
        series: [
          { name: t("dashboard.prompt_tokens"), values: all.prompt_tokens },
          { name: t("dashboard.completion_tokens"), values: all.completion_tokens },
          ...endpoints.map((s) => ({ name: s.endpoint, values: plus(s.prompt_tokens, s.completion_tokens) })),
        ],
      }),
      lineChart({
        title: t("dashboard.chart.errors"),
        times,
        label,
        series: [{ name: t("dashboard.all_endpoints"), values: all.errors }, ...perEndpoint("errors")],
      }),
      lineChart({
        title: t("dashboard.chart.latency"),
        times,
        label,
        series: [
          { name: "p50", values: all.latency_p50_ms.map((v) => (v === null ? NaN : v)) },
          { name: "p95", values: all.latency_p95_ms.map((v) => (v === null ? NaN : v)) },
          ...endpoints.map((s) => ({
            name: `${s.endpoint} p95`,
            values: s.latency_p95_ms.map((v) => (v === null ? NaN : v)),
          })),
        ],
      }),
    );
    charts.dataset.requests = String(requests);
  }

  function total(key, value) {
    return h("div", { class: "card" }, h("div", { class: "muted" }, t(key)), h("div", { class: "value" }, value));
  }

  await refresh();
  const timer = setInterval(() => refresh(true).catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
