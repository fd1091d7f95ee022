// The admin audit log: who changed what, when and from where; newest first, paged.

import { get, query } from "../api.js";
import { clear, fill, formatTime, h } from "../dom.js";
import { t } from "../i18n.js";

const PAGE = 50;

export async function render(main) {
  const admin = h("input", { name: "admin", placeholder: "ops" });
  const action = h("input", { name: "action", placeholder: "app.create" });
  const body = h("tbody");
  const more = h("button", { class: "secondary", hidden: true, onclick: () => load(false) }, t("requests.more"));
  let nextBeforeId = null;
  let latest = 0;
  for (const control of [admin, action]) control.addEventListener("change", () => load(true));
  fill(
    main,
    h("h1", {}, t("audit.title")),
    h("div", { class: "toolbar" }, h("label", {}, t("audit.admin"), admin), h("label", {}, t("audit.action"), action)),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, ["requests.time", "audit.admin", "audit.action", "audit.target", "audit.detail", "audit.address"].map((k) => h("th", {}, t(k))))),
        body,
      ),
    ),
    h("p", {}, more),
  );

  async function load(fresh) {
    const asked = ++latest;
    const search = query({ admin: admin.value.trim(), action: action.value.trim(), limit: PAGE, before_id: fresh ? "" : nextBeforeId });
    const page = await get(`/audit${search}`);
    if (asked !== latest) return;
    if (fresh) clear(body);
    body.append(
      ...page.rows.map((row) =>
        h(
          "tr",
          {},
          h("td", {}, formatTime(row.created_at)),
          h("td", {}, row.admin),
          h("td", {}, h("code", {}, row.action)),
          h("td", {}, row.target ?? ""),
          h("td", { class: "muted" }, row.detail && Object.keys(row.detail).length ? JSON.stringify(row.detail) : ""),
          h("td", {}, row.address ?? ""),
        ),
      ),
    );
    if (fresh && !page.rows.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, t("audit.none"))));
    nextBeforeId = page.next_before_id;
    more.hidden = nextBeforeId === null;
  }

  await load(true);
}
