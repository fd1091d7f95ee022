// Two message catalogs (i18n/en.json, i18n/zh-CN.json) with the same keys. The language is the
// one chosen last (localStorage), else Chinese when the browser asks for it, else English.

const STORAGE_KEY = "qfserve.console.lang";
export const LANGUAGES = ["zh-CN", "en"];

let messages = {};
let current = "en";

export function preferredLanguage() {
  const chosen = localStorage.getItem(STORAGE_KEY);
  if (LANGUAGES.includes(chosen)) return chosen;
  const asked = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
  for (const tag of asked) {
    const lower = String(tag || "").toLowerCase();
    if (lower.startsWith("zh")) return "zh-CN";
    if (lower.startsWith("en")) return "en";
  }
  return "en";
}

export async function loadLanguage(lang) {
  const reply = await fetch(`i18n/${lang}.json`, { credentials: "same-origin" });
  messages = await reply.json();
  current = lang;
  document.documentElement.lang = lang;
}

export async function chooseLanguage(lang) {
  localStorage.setItem(STORAGE_KEY, lang);
  await loadLanguage(lang);
}

export function language() {
  return current;
}

// The message for `key`, with {name} placeholders filled from `params`.
export function t(key, params) {
  const text = messages[key] ?? key;
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}
