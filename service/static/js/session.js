/* Sign-in. The page asks `GET /whoami` who it is; when the API wants a token and the
 * browser has no session, a dialog asks for the token once, sends it in the Authorization
 * header of `POST /session` (which sets the HttpOnly cookie `gq_session`) and forgets it.
 * "Sign out" is `POST /session/end`. See docs/security.md, "The web page". */

import { api, onUnauthorized } from "./api.js";
import { $ } from "./dom.js";

// {name, role: "read"|"submit"|"admin"|null, authenticated, open}
export const me = { name: null, role: null, authenticated: false, open: false };
const RANK = { read: 1, submit: 2, admin: 3 };

export async function whoami() {
  Object.assign(me, await api("whoami"));
  showUser();
  return me;
}

export const mayRead = () => me.open || me.authenticated;
export const maySubmit = () => (RANK[me.role] || 0) >= RANK.submit;
// Anyone who may submit cancels their own jobs; another's needs admin (docs/security.md).
export function mayCancel(job) {
  if (me.role === "admin") return true;
  return maySubmit() && job.submittedBy === me.name;
}

function showUser() {
  const who = $("whoami");
  const out = $("signout-btn");
  if (me.open) {
    who.textContent = "open API · admin";
    who.title = "no token configured: everyone is an anonymous admin";
  } else if (me.authenticated) {
    who.textContent = `${me.name} · ${me.role}`;
    who.title = `signed in as ${me.name} (role ${me.role})`;
  } else {
    who.textContent = "not signed in";
    who.title = "";
  }
  who.dataset.role = me.role || "";
  out.hidden = !me.authenticated || me.open;
  $("signin-btn").hidden = me.authenticated || me.open;
  document.body.dataset.role = me.role || "none";
}

export function showSignIn(message = "") {
  const dlg = $("signin-dialog");
  $("signin-error").textContent = message;
  $("signin-error").hidden = !message;
  if (!dlg.open) dlg.showModal();
  $("token-input").focus();
}

async function signIn(token) {
  // The token travels once, in a header of this request; the answer's cookie is what the
  // browser keeps.
  await api("session", { body: {}, headers: { Authorization: `Bearer ${token}` } });
}

export function initSession() {
  onUnauthorized(() => {
    me.authenticated = false;
    showUser();
    showSignIn("Your session has ended: sign in again.");
  });
  $("signin-btn").addEventListener("click", () => showSignIn());
  $("signout-btn").addEventListener("click", async () => {
    await api("session/end", { body: {} }).catch(() => {});
    location.reload();
  });
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("token-input");
    const token = input.value.trim();
    input.value = ""; // not kept anywhere, not even in the form
    if (!token) return showSignIn("Paste a token first.");
    const btn = $("signin-submit");
    btn.disabled = true;
    try {
      await signIn(token);
      location.reload(); // everything is read again, as the signed-in user
    } catch (e) {
      showSignIn(e.status === 401 ? "That token is not valid here." : `Sign-in failed: ${e.message}`);
    } finally {
      btn.disabled = false;
    }
  });
  $("signin-cancel").addEventListener("click", () => $("signin-dialog").close());
}
