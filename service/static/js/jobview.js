/* One job: status, where it stands in the queue, its options, checkpoints, memory
 * estimate, files, the circuit card, the metric chart (re-read at each new epoch) and the
 * live log. */

import { api, artifactHref } from "./api.js";
import { JobChart } from "./chart.js";
import { renderCircuit } from "./circuit.js";
import { $, el } from "./dom.js";
import {
  ago, bytes, duration, epochs, eta, fmtTime, jobName, keptAcc, num, ordinal, pct, shortId,
} from "./format.js";
import { onJobChange, upsert } from "./jobs.js";
import { LogView } from "./log.js";
import { isFinal, meta } from "./options.js";
import { mayCancel } from "./session.js";

// "3rd in queue, waiting for a free slot" (queuePosition counts the jobs claimed before it).
export function queueText(job) {
  if (job.status !== "Pending" || typeof job.queuePosition !== "number") return "";
  const waiting = job.waitingFor ? `, waiting for ${job.waitingFor}` : "";
  return `${ordinal(job.queuePosition + 1)} in queue${waiting}`;
}

// "latest at epoch 7 (1.2 MiB, 3m ago) · 2 kept · resumed from epoch 5 of attempt 1a2b3c4d"
export function checkpointText(job) {
  const parts = [];
  const cp = job.checkpoint || (job.checkpoints || []).at(-1);
  if (cp) {
    const step = cp.step ? ` step ${cp.step}` : "";
    parts.push(`latest at epoch ${cp.epoch}${step} (${bytes(cp.length)}, ${ago(cp.createdAt)})`);
    const kept = (job.checkpoints || []).length;
    if (kept > 1) parts.push(`${kept} kept`);
  }
  const r = job.resumedFrom;
  if (r) {
    const step = r.step ? ` step ${r.step}` : "";
    parts.push(`resumed from epoch ${r.epoch}${step} of attempt ${r.attemptId.slice(0, 8)}`);
  }
  return parts.join(" · ");
}

export function memoryText(m) {
  if (!m) return "—";
  return `${bytes(m.cuda)} GPU · ${bytes(m.cpu)} CPU`;
}

export class JobView {
  constructor(id) {
    this.id = id;
    this.job = null;
    this.queue = null; // {queuePosition, waitingFor}: only GET /jobs/{id} says it
    this.metricsEpoch = -1;
    this.disposed = false;
    this.chart = new JobChart($("chart"), 0);
    this.log = new LogView(id);
    $("chart").replaceChildren();
    $("chart").dataset.points = "0";
    $("chart-empty").hidden = false;
    $("metric-latest").textContent = "";
    $("circuit-card").hidden = true;
    this.showError("");
    // Another job's change may move this one up the queue: ask again (Pending only).
    this.unlisten = onJobChange((job) => {
      if (job && job.id === this.id) this.update(job);
      if (this.job && this.job.status === "Pending") this.refresh();
    });
    this.start();
  }

  async start() {
    try {
      await this.refresh();
    } catch (e) {
      this.showError(e.status === 404 ? `No job ${this.id}.` : e.message);
      return;
    }
    if (this.disposed) return;
    this.log.start();
    this.loadMetrics();
  }

  // GET /jobs/{id}, one at a time: calls during a read make one more read after it.
  async refresh() {
    if (this.reading) { this.readAgain = true; return; }
    this.reading = true;
    try {
      const job = await api(`jobs/${this.id}`);
      if (this.disposed) return;
      this.queue = { queuePosition: job.queuePosition, waitingFor: job.waitingFor };
      this.update(upsert(job, { quiet: true }));
    } finally {
      this.reading = false;
      if (this.readAgain && !this.disposed) { this.readAgain = false; this.refresh().catch(() => {}); }
    }
  }

  dispose() {
    this.disposed = true;
    this.unlisten();
    this.log.dispose();
    if (this.ticker) clearInterval(this.ticker);
    this.chart.destroy();
  }

  showError(text, status = "Failed") {
    const b = $("job-error");
    b.textContent = text;
    b.className = `banner ${status === "Failed" ? "error" : "info"}`;
    b.hidden = !text;
  }

  // A running job's duration moves on without any event: redraw it each second.
  tickDuration(job) {
    const running = job.status === "Running" && !this.disposed;
    if (running && !this.ticker) this.ticker = setInterval(() => this.job && this.update(this.job), 1000);
    else if (!running && this.ticker) { clearInterval(this.ticker); this.ticker = 0; }
  }

  update(job) {
    if (this.disposed) return;
    if (this.job && this.job.version > job.version) return;
    this.job = job;
    const shown = { ...job, ...(job.status === "Pending" ? this.queue : {}) };
    $("job-title").textContent = jobName(job);
    const pill = $("job-status");
    pill.className = `pill ${job.status}`;
    pill.textContent = job.status === "Running" && job.cancelRequested ? "Cancelling" : job.status;
    $("job-id").textContent = job.id;
    const [done, total] = epochs(job);
    $("job-progress").textContent = total ? `epoch ${done}/${total}` : "";
    $("job-queue").textContent = queueText(shown);
    $("job-queue").hidden = !queueText(shown);
    const left = job.status === "Running" ? eta(job.etaS) : "";
    $("job-eta").textContent = left ? `about ${left} left` : "";
    $("job-eta").hidden = !left;
    this.renderHeadline(job);
    this.renderWarnings(job);
    this.renderCancel(job);
    this.showError(job.error && job.status !== "Succeeded" ? job.error : "", job.status);
    this.tickDuration(job);
    this.renderMeta(job);
    const cp = checkpointText(job);
    $("job-checkpoints").hidden = !cp;
    $("job-checkpoints-text").textContent = cp;
    $("job-hp").replaceChildren(...Object.entries(job.hyperparameters || {}).map(([k, v]) =>
      el("span", { class: "chip" }, `${k}=`, el("b", { text: String(v) }))));
    this.renderFiles(job);
    renderCircuit(job);
    const m = job.latestMetrics;
    if (m && typeof m.epoch === "number" && m.epoch > this.metricsEpoch) this.loadMetrics();
  }

  // The kept network's test accuracy once the run has a result; the latest epoch's before.
  renderHeadline(job) {
    const acc = keptAcc(job);
    const box = $("job-acc");
    box.hidden = !acc;
    if (!acc) return;
    $("job-acc-value").textContent = pct(acc.discrete);
    $("job-acc-what").textContent = acc.kept ? `test acc (discrete), kept epoch ${acc.epoch}` : "test acc (discrete)";
    $("job-acc-relaxed").textContent = typeof acc.relaxed === "number" ? `relaxed ${pct(acc.relaxed)}` : "";
  }

  // A Succeeded run can still hand back a network nobody should use: said in a banner.
  renderWarnings(job) {
    const warnings = job.warnings || [];
    const box = $("job-warnings");
    box.hidden = warnings.length === 0;
    box.replaceChildren(...warnings.map((w) =>
      el("p", { "data-code": w.code }, el("b", { text: `⚠ ${w.code.replace(/_/g, " ")}: ` }), w.message)));
  }

  renderCancel(job) {
    const cancel = $("cancel-btn");
    cancel.hidden = !mayCancel(job);
    cancel.disabled = isFinal(job.status) || job.cancelRequested;
    cancel.textContent = job.cancelRequested && !isFinal(job.status) ? "Cancel requested" : "Cancel job";
  }

  renderMeta(job) {
    const w = job.worker;
    const items = [
      ["submitted by", job.submittedBy || "—"],
      ["created", fmtTime(job.createdAt)],
      ["started", fmtTime(job.startedAt)],
      ["finished", fmtTime(job.finishedAt)],
      ["duration", job.startedAt ? duration(job.startedAt, job.finishedAt) : "—"],
      ["worker", w ? `${w.host} · ${w.gpu}` : "—"],
      ["attempt", `${job.attempt} of ${job.maxAttempts}`],
      ["priority", typeof job.priority === "number" ? String(job.priority) : "—"],
      ["memory estimate", memoryText(job.memoryEstimate)],
      ["exit code", job.exitCode === null || job.exitCode === undefined ? "—" : String(job.exitCode)],
    ];
    // Run options the page does not name above (a new one appears by itself).
    const named = new Set(["name", "maxAttempts", "priority"]);
    for (const o of meta.run) {
      if (!named.has(o.name) && o.name in job) items.push([o.label.toLowerCase(), num(job[o.name])]);
    }
    const nodes = items.map(([k, v]) => el("div", { "data-key": k, class: k === "memory estimate" ? "wide" : null },
      el("dt", { text: k }), el("dd", { text: v, title: v })));
    if (job.sweepId) {
      nodes.push(el("div", { "data-key": "sweep" }, el("dt", { text: "sweep" }),
        el("dd", {}, el("a", { href: `#/sweeps/${job.sweepId}`, text: shortId(job.sweepId) }))));
    }
    $("job-meta").replaceChildren(...nodes);
  }

  renderFiles(job) {
    const files = job.artifacts || [];
    $("job-files").hidden = files.length === 0;
    $("job-files").replaceChildren(
      ...(files.length ? [el("span", { class: "muted", text: "files" })] : []),
      ...files.map((f) => el("a", {
        class: "btn small file", href: artifactHref(job.id, f.name),
        download: f.name.split("/").pop(), title: `${f.name}, ${bytes(f.length)}`,
      }, `⤓ ${f.name}`)));
  }

  // The chart reads the stored per-epoch rows whenever a newer epoch is announced on
  // /ws/jobs: one small GET per epoch, never a timer.
  async loadMetrics() {
    if (this.loadingMetrics) { this.metricsAgain = true; return; }
    this.loadingMetrics = true;
    try {
      const body = await api(`jobs/${this.id}/metrics`);
      if (!this.disposed) this.drawChart(body.metrics || []);
    } catch {
      /* the next announcement retries */
    } finally {
      this.loadingMetrics = false;
      if (this.metricsAgain) { this.metricsAgain = false; this.loadMetrics(); }
    }
  }

  drawChart(rows) {
    if (!rows.length) return;
    this.metricsEpoch = Math.max(...rows.map((r) => r.epoch));
    const last = rows[rows.length - 1];
    $("metric-latest").textContent = Object.entries(last)
      .filter(([k, v]) => typeof v === "number" && !["epoch", "epochs"].includes(k))
      .map(([k, v]) => `${k}=${num(v)}`).join("  ");
    $("chart-empty").hidden = true;
    this.chart.total = (this.job && this.job.hyperparameters.epochs) || rows.length;
    this.chart.draw(rows);
  }

  resize() { this.chart.resize(); }
}

export function initJobView(current) {
  $("cancel-btn").addEventListener("click", async () => {
    const view = current();
    if (!view) return;
    const btn = $("cancel-btn");
    btn.disabled = true;
    try {
      upsert(await api(`jobs/${view.id}/cancel`, { body: {} }));
    } catch (e) {
      view.showError(`Cancel failed: ${e.message}`);
      btn.disabled = false;
    }
  });
}
