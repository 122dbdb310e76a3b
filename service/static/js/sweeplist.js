/* The sweeps, newest first (GET /sweeps, paged by `next`), re-read when one of their jobs
 * changes. */

import { api, serial } from "./api.js";
import { $, el } from "./dom.js";
import { ago, eta, metricValue, num } from "./format.js";
import { onJobChange } from "./jobs.js";

export function progressText(s) {
  const c = s.counts || {};
  const done = (c.Succeeded || 0) + (c.Failed || 0) + (c.Cancelled || 0);
  const parts = [`${done}/${s.total} done`];
  if (c.Running) parts.push(`${c.Running} running`);
  if (c.Failed) parts.push(`${c.Failed} failed`);
  if (c.Cancelled) parts.push(`${c.Cancelled} cancelled`);
  if (s.status === "Active" && eta(s.etaS)) parts.push(`about ${eta(s.etaS)} left`);
  return parts.join(" · ");
}

export function bestText(s) {
  if (!s.best) return "—";
  const opts = Object.entries(s.best.options || {}).map(([k, v]) => `${k}=${num(v)}`).join(" ");
  const b = s.best;
  const spread = b.n > 1 && typeof b.std === "number" ? ` ± ${metricValue(s.metric, b.std)} (n=${b.n})` : "";
  return `${metricValue(s.metric, b.value)}${spread}${opts ? ` (${opts})` : ""}`;
}

export class SweepList {
  constructor() {
    this.sweeps = [];
    this.next = null;
    this.disposed = false;
    this.reload = serial(() => this.load(), (e) => this.error(e));
    // A change of a sweep's job changes its counts: read the list again.
    this.unlisten = onJobChange((job) => { if (!job || job.sweepId) this.reload(); });
    $("sweep-more").onclick = () => this.more().catch((e) => this.error(e));
    this.reload();
  }

  error(e) {
    $("sweeps-error").textContent = e.status === 404 ? "This API has no sweeps yet (GET /sweeps: 404)." : e.message;
    $("sweeps-error").hidden = false;
  }

  async load() {
    // Re-read as many as are shown, so paging on is not undone by a live update.
    const limit = Math.min(200, Math.max(50, this.sweeps.length));
    const page = await api(`sweeps?limit=${limit}`);
    if (this.disposed) return;
    this.sweeps = page.sweeps;
    this.next = page.next;
    this.render();
  }

  async more() {
    if (!this.next) return;
    const page = await api(`sweeps?limit=50&after=${encodeURIComponent(this.next)}`);
    this.sweeps.push(...page.sweeps);
    this.next = page.next;
    this.render();
  }

  render() {
    $("sweeps-error").hidden = true;
    $("sweeps-empty").hidden = this.sweeps.length > 0;
    $("sweep-more").hidden = !this.next;
    $("sweeps-body").replaceChildren(...this.sweeps.map((s) => el("tr", { "data-id": s.id, "data-status": s.status },
      el("td", {}, el("a", { href: `#/sweeps/${s.id}`, text: s.name || `sweep ${s.id.slice(-8)}` })),
      el("td", {}, el("span", { class: `pill ${s.status}`, text: s.status })),
      el("td", { text: progressText(s) }),
      el("td", { text: (s.varying || []).join(", ") || "—" }),
      el("td", { text: s.metric }),
      el("td", { class: "num", text: bestText(s) }),
      el("td", { text: s.submittedBy || "—" }),
      el("td", { text: ago(s.createdAt), title: s.createdAt }))));
  }

  dispose() {
    this.disposed = true;
    this.unlisten();
  }
}
