// The admin API (docs/admin-api.md): same origin, the session cookie sent by the browser,
// X-CSRF-Token on every call that changes something. A 401 means the session is over.

const BASE = "/admin/api";

let csrfToken = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || String(status));
    this.status = status;
    this.code = code;
  }
}

export function setSession(session) {
  csrfToken = session ? session.csrf_token : null;
}

export function whenSignedOut(handler) {
  onSignedOut = handler;
}

export async function call(method, path, body, { background = false } = {}) {
  const headers = { Accept: "application/json" };
  // A page's timed refresh does not restart the session's idle clock on the server.
  if (background) headers["X-Admin-Background"] = "1";
  if (method !== "GET" && method !== "HEAD" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(BASE + path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (reply.status === 204) return null;
  const text = await reply.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!reply.ok) {
    const error = (data && data.error) || {};
    if (reply.status === 401 && path !== "/login") onSignedOut(true);
    throw new ApiError(reply.status, error.code, error.message);
  }
  return data;
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body) => call("POST", path, body);
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

// A query string from the given parameters, leaving out empty ones.
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export const API_BASE = BASE;
