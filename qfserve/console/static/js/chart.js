// Small SVG line charts: one or more series over shared x values (times), with axes and a legend.

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const WIDTH = 560;
const HEIGHT = 200;
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A round top for the y axis and the step between its at most five grid lines.
function niceScale(value) {
  if (!(value > 0)) return { max: 1, step: 0.25 };
  const power = 10 ** Math.floor(Math.log10(value / 5));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s * 5 >= value);
  return { max: Math.ceil(value / step) * step, step };
}

function shortNumber(value) {
  if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  return `${+value.toFixed(2)}`;
}

// `times`: x values in ms since the epoch; `series`: [{name, values}] of the same length.
export function lineChart({ title, times, series, label }) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption);
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title });
  figure.append(svg);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const all = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const { max: yMax, step } = niceScale(Math.max(0, ...all));
  const t0 = times.length ? times[0] : 0;
  const t1 = times.length > 1 ? times[times.length - 1] : t0 + 1;
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0 || 1)) * plotW;
  const y = (v) => PAD.top + plotH - (v / yMax) * plotH;

  for (let v = 0; v <= yMax + step / 2; v += step) {
    svg.append(el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, shortNumber(v)));
  }
  const ticks = Math.min(5, times.length);
  for (let i = 0; i < ticks; i++) {
    const index = ticks === 1 ? 0 : Math.round((i * (times.length - 1)) / (ticks - 1));
    const when = new Date(times[index]);
    const text = label ? label(when) : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const anchor = i === 0 ? "start" : i === ticks - 1 ? "end" : "middle";
    svg.append(el("text", { x: x(times[index]), y: HEIGHT - 8, "text-anchor": anchor, class: "tick" }, text));
  }
  series.forEach((s, n) => {
    const colour = COLOURS[n % COLOURS.length];
    // A gap (no value: no request in that interval) breaks the line rather than bridging it;
    // a value alone between gaps is a dot.
    const segments = [[]];
    s.values.forEach((v, i) => {
      if (Number.isFinite(v)) segments[segments.length - 1].push([x(times[i]).toFixed(1), y(v).toFixed(1)]);
      else if (segments[segments.length - 1].length) segments.push([]);
    });
    const path = segments
      .filter((points) => points.length > 1)
      .map((points) => points.map(([px, py], i) => `${i ? "L" : "M"}${px},${py}`).join(""))
      .join("");
    if (path) svg.append(el("path", { d: path, fill: "none", stroke: colour, "stroke-width": 2, "stroke-linejoin": "round", class: "series" }));
    for (const points of segments.filter((p) => p.length === 1)) {
      svg.append(el("circle", { cx: points[0][0], cy: points[0][1], r: 2.5, fill: colour, class: "series" }));
    }
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, n) => {
    const item = document.createElement("span");
    item.style.setProperty("--swatch", COLOURS[n % COLOURS.length]);
    item.textContent = s.name;
    legend.append(item);
  });
  figure.append(legend);
  figure.dataset.points = String(series.reduce((sum, s) => sum + s.values.filter((v) => v > 0).length, 0));
  return figure;
}

// Horizontal bars: one per label, for the groups that are not a time axis.
export function barChart({ title, rows }) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption);
  const barH = 18;
  const gap = 6;
  const labelW = 140;
  const height = Math.max(1, rows.length) * (barH + gap) + gap;
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": title });
  const max = Math.max(1, ...rows.map((r) => r.value));
  rows.forEach((row, i) => {
    const top = gap + i * (barH + gap);
    const width = ((WIDTH - labelW - 70) * row.value) / max;
    const name = row.label.length > 20 ? `${row.label.slice(0, 19)}…` : row.label;
    svg.append(el("text", { x: labelW - 6, y: top + barH - 5, "text-anchor": "end", class: "tick" }, name));
    svg.append(el("rect", { x: labelW, y: top, width: Math.max(1, width), height: barH, fill: COLOURS[0], rx: 2 }));
    svg.append(el("text", { x: labelW + width + 6, y: top + barH - 5, class: "tick" }, shortNumber(row.value)));
  });
  figure.append(svg);
  figure.dataset.points = String(rows.filter((r) => r.value > 0).length);
  return figure;
}
