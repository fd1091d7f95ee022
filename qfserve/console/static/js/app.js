// The console's shell: session, hash routes, side navigation, language switch, idle timeout.

import * as api from "./api.js";
import { clear, fill, h } from "./dom.js";
import { LANGUAGES, chooseLanguage, language, loadLanguage, preferredLanguage, t } from "./i18n.js";

const PAGES = [
  { path: "dashboard", label: "nav.dashboard", load: () => import("./pages/dashboard.js") },
  { path: "apps", label: "nav.apps", load: () => import("./pages/apps.js") },
  { path: "usage", label: "nav.usage", load: () => import("./pages/usage.js") },
  { path: "requests", label: "nav.requests", load: () => import("./pages/requests.js") },
  { path: "endpoints", label: "nav.endpoints", load: () => import("./pages/endpoints.js") },
  { path: "playground", label: "nav.playground", load: () => import("./pages/playground.js") },
  { path: "audit", label: "nav.audit", load: () => import("./pages/audit.js") },
];
const ACTIVITY = ["pointerdown", "keydown", "wheel", "touchstart"];

const root = document.getElementById("root");
let session = null;
let leavePage = null;
let idleTimer = null;
let signOutNotice = null;

function signInPage() {
  const name = h("input", { name: "name", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const message = h("p", { class: "error", role: "alert" }, signOutNotice ? t(signOutNotice) : "");
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        message.textContent = "";
        try {
          const opened = await api.post("/login", { name: name.value, password: password.value });
          signOutNotice = null;
          startSession(opened);
        } catch (error) {
          message.textContent =
            error.status === 401 ? t("signin.wrong") : error.status === 429 ? t("signin.limited") : error.message;
        }
      },
    },
    h("label", {}, t("signin.name"), name),
    h("label", {}, t("signin.password"), password),
    h("button", { type: "submit" }, t("signin.submit")),
    message,
    h("p", { class: "muted" }, t("signin.hint")),
  );
  fill(root,
    h("div", { class: "signin card" }, h("h1", {}, t("signin.title")), form, languageSwitch()),
  );
  name.focus();
}

function languageSwitch() {
  return h(
    "select",
    {
      "aria-label": t("nav.language"),
      class: "language",
      onchange: async (event) => {
        await chooseLanguage(event.target.value);
        if (session) showRoute();
        else signInPage();
      },
    },
    LANGUAGES.map((lang) => h("option", { value: lang, selected: lang === language() }, t(`language.${lang}`))),
  );
}

function startSession(opened) {
  session = opened;
  api.setSession(opened);
  watchIdle();
  if (!location.hash || location.hash === "#/signin") location.hash = "#/dashboard";
  else showRoute();
}

async function signOut(notice) {
  const wasSignedIn = session !== null;
  stopIdle();
  session = null;
  if (wasSignedIn && notice !== "signin.expired") {
    try {
      await api.post("/logout");
    } catch {
      // The session may be over already: nothing more to end.
    }
  }
  api.setSession(null);
  signOutNotice = notice || null;
  if (leavePage) leavePage();
  leavePage = null;
  signInPage();
}

// The server ends an idle session; the console signs out at the same moment, so an operator who
// walked away finds the sign-in page rather than an error on the next click.
function watchIdle() {
  stopIdle();
  const seconds = session && session.idle_timeout_seconds;
  if (!seconds) return;
  const restart = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => signOut("signin.idle"), seconds * 1000);
  };
  watchIdle.restart = restart;
  for (const kind of ACTIVITY) window.addEventListener(kind, restart, { passive: true });
  restart();
}

function stopIdle() {
  clearTimeout(idleTimer);
  if (watchIdle.restart) for (const kind of ACTIVITY) window.removeEventListener(kind, watchIdle.restart);
  watchIdle.restart = null;
}

async function showRoute() {
  if (!session) return signInPage();
  const [path, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = PAGES.find((p) => p.path === path) || PAGES[0];
  if (leavePage) leavePage();
  leavePage = null;
  const main = h("main", { "data-page": page.path });
  const nav = h(
    "nav",
    { class: "side" },
    h("div", { class: "brand" }, "qfserve"),
    PAGES.map((p) => h("a", { href: `#/${p.path}`, class: p === page ? "active" : "" }, t(p.label))),
    h(
      "div",
      { class: "foot" },
      h("span", {}, t("nav.signed_in_as", { name: session.name })),
      languageSwitch(),
      h("button", { class: "secondary", onclick: () => signOut() }, t("nav.sign_out")),
    ),
  );
  fill(root, h("div", { class: "shell" }, nav, main));
  fill(main, h("p", { class: "loading" }, t("common.loading")));
  try {
    const module = await page.load();
    clear(main);
    leavePage = (await module.render(main, { params: rest.map(decodeURIComponent) })) || null;
  } catch (error) {
    if (error instanceof api.ApiError && error.status === 401) return;
    fill(main, h("p", { class: "error", role: "alert" }, error.message));
  }
}

// A failed action (a refused change, a server that went away) is shown, not lost in the console.
function showError(error) {
  if (error instanceof api.ApiError && error.status === 401) return;
  const toast = h("div", { class: "toast error", role: "alert" }, t("common.error", { message: error.message || error }));
  document.body.append(toast);
  setTimeout(() => toast.remove(), 8000);
}

async function start() {
  await loadLanguage(preferredLanguage());
  window.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    showError(event.reason);
  });
  api.whenSignedOut(() => {
    if (session) signOut("signin.expired");
  });
  window.addEventListener("hashchange", showRoute);
  try {
    startSession(await api.get("/me"));
  } catch {
    signInPage();
  }
}

start();
