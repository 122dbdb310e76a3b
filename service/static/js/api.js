/* Calls to the API. The browser is signed in by the HttpOnly session cookie `gq_session`
 * (session.js), which fetch() and WebSocket send by themselves: no token is ever kept by
 * the page or put in a URL. */

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.fields = err.fields || [];
    this.combination = err.combination || null;
  }
}

let unauthorized = () => {};
// Who to tell when the API answers 401 (the session ended or was never started).
export function onUnauthorized(fn) { unauthorized = fn; }

export const url = (path) => new URL(path, document.baseURI);

// fetch() relative to the page; an error answer throws ApiError.
export async function request(path, { method = "GET", headers = {}, body } = {}) {
  const res = await fetch(url(path), { method, headers, body, credentials: "same-origin" });
  if (!res.ok) {
    const text = await res.text();
    let err = null;
    try { err = text ? JSON.parse(text) : null; } catch { err = null; }
    if (res.status === 401) unauthorized();
    throw new ApiError(res.status, err);
  }
  return res;
}

// A JSON call: `body` (any JSON value) is sent as application/json, which every write
// needs (docs/security.md, "Cross-site requests").
export async function api(path, { method, body, headers = {} } = {}) {
  const h = { Accept: "application/json", ...headers };
  if (body !== undefined) h["Content-Type"] = "application/json";
  const res = await request(path, {
    method: method || (body === undefined ? "GET" : "POST"),
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  try { return text ? JSON.parse(text) : null; } catch { return null; }
}

// The download link of a run's file (the cookie signs it in; the API answers
// `Content-Disposition: attachment`).
export function artifactHref(jobId, name) {
  const path = name.split("/").map(encodeURIComponent).join("/");
  return url(`jobs/${encodeURIComponent(jobId)}/artifacts/${path}`).pathname;
}

export function wsUrl(path, params = {}) {
  const u = url(path);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, String(v));
  return u.toString();
}

/* A WebSocket that reconnects with backoff until closed by us. `onopen` runs on every
 * (re)connection, so callers re-synchronise there; `onclose` returning false stops it. */
export class Socket {
  constructor(urlFn, handlers) {
    this.urlFn = urlFn;
    this.h = handlers;
    this.delay = 250;
    this.stopped = false;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const ws = new WebSocket(this.urlFn());
    this.ws = ws;
    ws.onopen = () => { this.delay = 250; if (this.h.onopen) this.h.onopen(); };
    ws.onmessage = (ev) => this.h.onmessage(JSON.parse(ev.data));
    ws.onclose = (ev) => {
      if (this.stopped) return;
      const again = this.h.onclose ? this.h.onclose(ev) : true;
      if (again === false) return;
      this.timer = setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 5000);
    };
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
  }
}

/* `fn` run one call at a time: calls made while one runs make exactly one more run after
 * it (a burst of change events becomes at most two reads). Errors go to `onError`. */
export function serial(fn, onError = () => {}) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) { again = true; return; }
    running = true;
    try { await fn(); } catch (e) { onError(e); } finally {
      running = false;
      if (again) { again = false; run(); }
    }
  };
  return run;
}
