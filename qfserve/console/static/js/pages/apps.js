// Apps: the list and a new app's keys (#/apps); one app's keys, quota and actions (#/apps/ID).

import { del, get, patch, post } from "../api.js";
import { clear, fill, formatTime, h } from "../dom.js";
import { t } from "../i18n.js";
import { secretBox } from "../secret.js";

const QUOTAS = ["qps", "rpm", "tpm", "daily", "total"];
const KEY_KINDS = ["app_key", "v2_key", "iam_key"];

export async function render(main, { params }) {
  if (params.length && params[0]) return renderApp(main, Number(params[0]));
  return renderList(main);
}

function status(app) {
  return app.disabled
    ? h("span", { class: "badge bad" }, t("apps.disabled"))
    : h("span", { class: "badge ok" }, t("apps.enabled"));
}

async function renderList(main) {
  const notice = h("div");
  const body = h("tbody");
  const name = h("input", { name: "name", required: true, maxlength: 128, placeholder: t("apps.name_placeholder") });
  fill(main, 
    h("h1", {}, t("apps.title")),
    h(
      "form",
      {
        class: "toolbar",
        onsubmit: async (event) => {
          event.preventDefault();
          const created = await post("/apps", { name: name.value.trim() });
          name.value = "";
          fill(notice, 
            secretBox(t("apps.created", { name: created.app.name, id: created.app.app_id }), [
              ["API Key", created.app.api_key],
              ["Secret Key", created.secret_key],
            ]),
          );
          await load();
        },
      },
      h("label", {}, t("apps.new_name"), name),
      h("button", { type: "submit" }, t("apps.create")),
    ),
    notice,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, ["ID", t("apps.name"), "API Key", t("apps.status"), t("apps.endpoints"), t("apps.created_at")].map((c) => h("th", {}, c))),
        ),
        body,
      ),
    ),
  );

  async function load() {
    const { apps } = await get("/apps");
    fill(body, 
      apps.map((app) =>
        h(
          "tr",
          { "data-app-id": app.app_id },
          h("td", { class: "num" }, app.app_id),
          h("td", {}, h("a", { href: `#/apps/${app.app_id}` }, app.name)),
          h("td", {}, h("code", {}, app.api_key)),
          h("td", {}, status(app)),
          h("td", {}, app.endpoints ? app.endpoints.join(", ") : t("apps.all_endpoints")),
          h("td", {}, formatTime(app.created_at)),
        ),
      ),
    );
    if (!apps.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, t("apps.none"))));
  }
  await load();
}

async function renderApp(main, appId) {
  const [app, server] = await Promise.all([get(`/apps/${appId}`), get("/server")]);
  const notice = h("div");
  const keysBody = h("tbody");
  const actions = h("div", { class: "row" });
  const title = h("h1", {});
  fill(main, 
    h("p", {}, h("a", { href: "#/apps" }, `← ${t("apps.title")}`)),
    title,
    actions,
    notice,
    h("h2", {}, t("keys.title")),
    keysSection(),
    h("h2", {}, t("quota.title")),
    quotaEditor(app, server, notice),
  );
  drawHeader(app);

  function drawHeader(current) {
    fill(title, `${current.name} `, h("span", { class: "muted" }, `#${current.app_id} `), status(current));
    fill(actions, 
      current.disabled
        ? h("button", { class: "secondary", onclick: () => act("enable") }, t("apps.enable"))
        : h("button", { class: "secondary", onclick: () => act("disable") }, t("apps.disable")),
      h(
        "button",
        {
          class: "secondary",
          onclick: async () => {
            if (!confirm(t("apps.rotate_confirm"))) return;
            const rotated = await post(`/apps/${appId}/rotate-secret`, {});
            fill(notice, 
              secretBox(t("apps.rotated"), [["API Key", current.api_key], ["Secret Key", rotated.secret_key]]),
            );
          },
        },
        t("apps.rotate"),
      ),
      h(
        "button",
        {
          class: "secondary",
          onclick: async () => {
            const revoked = await post(`/apps/${appId}/revoke-tokens`);
            fill(notice, h("p", { class: "ok", role: "status" }, t("apps.tokens_revoked", { count: revoked.revoked_tokens })));
          },
        },
        t("apps.revoke_tokens"),
      ),
      h(
        "button",
        {
          class: "danger",
          onclick: async () => {
            if (!confirm(t("apps.delete_confirm", { name: current.name }))) return;
            await del(`/apps/${appId}`);
            location.hash = "#/apps";
          },
        },
        t("apps.delete"),
      ),
    );
  }

  async function act(action) {
    drawHeader(await post(`/apps/${appId}/${action}`));
  }

  function keysSection() {
    const kind = h("select", { name: "kind" }, KEY_KINDS.map((k) => h("option", { value: k }, t(`keys.kind.${k}`))));
    loadKeys();
    return h(
      "div",
      {},
      h(
        "div",
        { class: "toolbar" },
        h("label", {}, t("keys.kind"), kind),
        h(
          "button",
          {
            onclick: async () => {
              const made = await post(`/apps/${appId}/keys`, { kind: kind.value });
              const values =
                made.kind === "iam_key"
                  ? [["Access Key", made.prefix], ["Secret Key", made.secret]]
                  : [[t(`keys.kind.${made.kind}`), made.secret]];
              fill(notice, secretBox(t("keys.created"), values));
              await loadKeys();
            },
          },
          t("keys.create"),
        ),
      ),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, [t("keys.kind"), t("keys.prefix"), t("apps.created_at"), t("apps.status"), ""].map((c) => h("th", {}, c)))),
          keysBody,
        ),
      ),
    );
  }

  async function loadKeys() {
    const { keys } = await get(`/apps/${appId}/keys`);
    fill(keysBody, 
      keys.map((key) =>
        h(
          "tr",
          {},
          h("td", {}, t(`keys.kind.${key.kind}`)),
          h("td", {}, h("code", {}, key.prefix)),
          h("td", {}, formatTime(key.created_at)),
          h("td", {}, key.revoked ? h("span", { class: "badge bad" }, t("keys.revoked")) : h("span", { class: "badge ok" }, t("keys.live"))),
          h(
            "td",
            {},
            key.revoked
              ? ""
              : h(
                  "button",
                  {
                    class: "danger",
                    onclick: async () => {
                      await post("/keys/revoke", { kind: key.kind, prefix: key.prefix });
                      await loadKeys();
                    },
                  },
                  t("keys.revoke"),
                ),
          ),
        ),
      ),
    );
    if (!keys.length) keysBody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, t("keys.none"))));
  }
}

function quotaEditor(app, server, notice) {
  const inputs = Object.fromEntries(
    QUOTAS.map((name) => {
      const fallback = server.quota_defaults[name];
      return [
        name,
        h("input", {
          name: `quota-${name}`,
          type: "number",
          min: 0,
          step: 1,
          value: app.quota[name] ?? "",
          placeholder: fallback ? t("quota.default_is", { value: fallback }) : t("quota.unlimited"),
        }),
      ];
    }),
  );
  const chosen = new Set(app.endpoints || []);
  const boxes = server.endpoints.map((name) => h("input", { type: "checkbox", name: "endpoint", value: name, checked: chosen.has(name) }));
  const saved = h("span", { role: "status" });
  return h(
    "form",
    {
      class: "card",
      onsubmit: async (event) => {
        event.preventDefault();
        const quota = Object.fromEntries(
          QUOTAS.map((name) => [name, inputs[name].value === "" ? null : Number(inputs[name].value)]),
        );
        const endpoints = boxes.filter((box) => box.checked).map((box) => box.value);
        clear(notice);
        await patch(`/apps/${app.app_id}/access`, { quota, endpoints });
        saved.className = "ok";
        saved.textContent = t("quota.saved");
      },
    },
    h("div", { class: "toolbar" }, QUOTAS.map((name) => h("label", {}, t(`quota.${name}`), inputs[name]))),
    h("p", { class: "muted" }, t("quota.help")),
    h("h2", {}, t("quota.endpoints")),
    h("div", { class: "row" }, boxes.map((box) => h("label", { class: "check" }, box, box.value))),
    h("p", { class: "muted" }, t("quota.endpoints_help")),
    h("div", { class: "row" }, h("button", { type: "submit" }, t("quota.save")), saved),
  );
}
