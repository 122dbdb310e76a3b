/* The "Usage" view (#/usage): the signed-in user's own use of the queue, from GET /usage
 * (an admin's answer names everyone: the page shows the caller's row alone; the API's
 * docs/api.md "Usage" says how each number is counted). Over all time and the last 30
 * days. */

import { api } from "./api.js";
import { $, el } from "./dom.js";
import { bytes } from "./format.js";
import { me } from "./session.js";

const PERIODS = [["all time", null], ["last 30 days", 30]];

function ownRow(report) {
  const row = report.users.find((u) => u.user === me.name);
  return row || { jobs: {}, slotHours: { gpu: 0, cpu: 0 }, logBytes: 0, fileBytes: 0 };
}

function jobsText(jobs) {
  const parts = Object.entries(jobs).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`);
  return parts.join(", ") || "none";
}

export class UsageView {
  constructor() {
    this.disposed = false;
    this.load().catch((e) => {
      $("usage-error").textContent = e.message;
      $("usage-error").hidden = false;
    });
  }

  async load() {
    const rows = [];
    for (const [label, days] of PERIODS) {
      const since = days === null ? null : new Date(Date.now() - days * 86400e3).toISOString();
      const report = await api(since === null ? "usage" : `usage?since=${encodeURIComponent(since)}`);
      if (this.disposed) return;
      const r = ownRow(report);
      rows.push(el("tr", { "data-period": label },
        el("td", { text: label }),
        el("td", { class: "jobs", text: jobsText(r.jobs) }),
        el("td", { class: "num gpu", text: r.slotHours.gpu.toFixed(2) }),
        el("td", { class: "num cpu", text: r.slotHours.cpu.toFixed(2) }),
        el("td", { class: "num logs", text: bytes(r.logBytes) }),
        el("td", { class: "num files", text: bytes(r.fileBytes) })));
    }
    $("usage-who").textContent = me.name ? `as ${me.name}` : "jobs submitted without a token";
    $("usage-error").hidden = true;
    $("usage-body").replaceChildren(...rows);
  }

  dispose() {
    this.disposed = true;
  }
}
