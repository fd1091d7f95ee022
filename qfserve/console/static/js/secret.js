// A secret shown once, with a copy button per value.

import { h } from "./dom.js";
import { t } from "./i18n.js";

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Without the clipboard API (a page not served over a secure origin): the old way.
    const area = h("textarea", { readonly: true }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = t("secret.copied");
}

// `values`: [[label, text], ...]; the first is usually public, the last the secret itself.
export function secretBox(title, values) {
  return h(
    "div",
    { class: "secret", role: "status" },
    h("strong", {}, title),
    h("p", { class: "muted" }, t("secret.once")),
    values.map(([label, text]) => {
      const button = h("button", { class: "secondary copy", type: "button" }, t("secret.copy"));
      button.addEventListener("click", () => copy(text, button));
      return h("div", {}, h("span", { class: "muted" }, label), h("code", { "data-secret": label }, text), button);
    }),
  );
}
