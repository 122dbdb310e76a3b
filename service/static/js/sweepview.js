/* One sweep (#/sweeps/<id>): a sortable table with a row per run (its varying options,
 * status, the final metric and test_acc_discrete of its kept network, a mark for a run with
 * warnings; the best row highlighted), with seeds a table per combination (mean ± std and n
 * of the metric, the best mean starred), the sweep's warnings as a banner, kept live by
 * `/ws/jobs?sweep=ID`; one chart overlaying the chosen metric per epoch for every run (the
 * best thicker); a scatter of the final metric against a chosen varying option; Cancel
 * sweep; ticked rows go to Compare. */

import { api, serial, Socket, wsUrl } from "./api.js";
import { OverlayChart } from "./chart.js";
import { $, el } from "./dom.js";
import { epochs, eta, fmtTime, lowerIsBetter, metricValue, num, rate, shortId } from "./format.js";
import { upsert } from "./jobs.js";
import { scatter } from "./plots.js";
import { compareHref, isSelected, onSelection, select, selected } from "./selection.js";
import { me, maySubmit } from "./session.js";
import { bestText, progressText } from "./sweeplist.js";

const HEADLINE = "test_acc_discrete";
// A run's value of a metric: its kept network's once it has a result with it (a finished
// run), else its latest epoch's (as the API's `value`).
const valueOf = (run, metric) => {
  const kept = (run.result || {})[metric];
  if (typeof kept === "number") return kept;
  const v = (run.latestMetrics || {})[metric];
  return typeof v === "number" ? v : null;
};
// `goal` says which way the API ranks; a metric named *loss is better lower.
const lowerFor = (sweep) => (sweep.goal ? sweep.goal === "min" : lowerIsBetter(sweep.metric));

// The run with the best value among those that have one (the first of equals), or null.
export function bestRun(runs, lower) {
  const scored = runs.filter((r) => typeof r.value === "number");
  if (!scored.length) return null;
  return scored.reduce((a, b) => ((lower ? b.value < a.value : b.value > a.value) ? b : a));
}

export class SweepView {
  constructor(id) {
    this.id = id;
    this.sweep = null;
    this.runs = []; // sweep.jobs, kept current by the job feed
    this.rows = new Map(); // job id -> metric rows (read when a run's epoch advances)
    this.epochRead = new Map(); // job id -> the epoch its rows were read at
    this.sort = { key: "index", dir: 1 };
    this.chartMetric = null;
    this.scatterX = null;
    this.disposed = false;
    this.chart = new OverlayChart($("sweep-chart"), { height: 300 });
    for (const id2 of ["sweep-body", "sweep-head"]) $(id2).replaceChildren();
    $("sweep-chart").replaceChildren();
    $("sweep-scatter").replaceChildren();
    $("sweep-error").hidden = true;
    this.reload = serial(() => this.load(), (e) => this.showError(e));
    this.readMetrics = serial(() => this.loadMetrics());
    this.unselect = onSelection(() => this.renderTable());
    $("sweep-note").hidden = true;
    $("sweep-cancel").onclick = () => this.cancel();
    $("sweep-compare").onclick = () => { location.hash = compareHref(); };
    this.socket = new Socket(() => wsUrl("ws/jobs", { sweep: id }), {
      onopen: () => this.reload(), // subscribed first, then read: no change falls between
      onmessage: (msg) => {
        if (msg.type === "job") this.onJob(msg.job);
        else if (msg.type === "resync") this.reload();
      },
      onclose: () => !this.disposed,
    });
  }

  showError(e) {
    $("sweep-error").textContent = e.status === 404 ? `No sweep ${this.id}.` : e.message;
    $("sweep-error").hidden = false;
  }

  async load() {
    const sweep = await api(`sweeps/${this.id}`);
    if (this.disposed) return;
    this.sweep = sweep;
    // The answer of a read started after a change event includes that change (serial()
    // reads again after any event that came during a read), so it is taken as it is.
    this.runs = sweep.jobs.map((r) => ({ ...r }));
    if (!this.chartMetric) this.chartMetric = sweep.metric;
    if (!this.scatterX || !(sweep.varying || []).includes(this.scatterX)) this.scatterX = (sweep.varying || [])[0] || null;
    this.render();
    this.readMetrics();
  }

  // A job change from the feed: the run's status and metrics move at once; the sweep's
  // counts and best are read again.
  onJob(job) {
    upsert(job);
    const run = this.runs.find((r) => r.id === job.id);
    if (!run) { this.reload(); return; }
    Object.assign(run, {
      status: job.status, latestMetrics: job.latestMetrics, startedAt: job.startedAt,
      finishedAt: job.finishedAt, result: job.result, warnings: job.warnings || [], etaS: job.etaS,
      targetEpoch: job.targetEpoch, stoppedEarly: job.stoppedEarly,
    });
    run.value = valueOf(run, this.sweep.metric);
    this.render();
    this.readMetrics();
    this.reload();
  }

  // Metric rows of each run whose epoch moved since they were read, four at a time.
  async loadMetrics() {
    const stale = this.runs.filter((r) => {
      const e = (r.latestMetrics || {}).epoch || 0;
      return e > 0 && this.epochRead.get(r.id) !== e;
    });
    for (let i = 0; i < stale.length; i += 4) {
      await Promise.all(stale.slice(i, i + 4).map(async (r) => {
        const e = (r.latestMetrics || {}).epoch || 0;
        const body = await api(`jobs/${r.id}/metrics`);
        this.rows.set(r.id, body.metrics || []);
        this.epochRead.set(r.id, e);
      }));
      if (this.disposed) return;
    }
    if (stale.length) this.renderCharts();
  }

  render() {
    const s = this.sweep;
    if (!s) return;
    for (const r of this.runs) if (typeof r.value !== "number") r.value = valueOf(r, s.metric);
    // The API's best when it names one (it ranks the same way), else ours from the feed.
    this.best = (s.best && this.runs.find((r) => r.id === s.best.id)) || bestRun(this.runs, lowerFor(s));
    $("sweep-title").textContent = s.name || `sweep ${shortId(s.id)}`;
    const pill = $("sweep-status");
    pill.className = `pill ${s.status}`;
    pill.textContent = s.status;
    $("sweep-id").textContent = s.id;
    $("sweep-progress").textContent = progressText(s);
    $("sweep-best").textContent = bestText(s);
    const warnings = s.warnings || [];
    $("sweep-warnings").hidden = warnings.length === 0;
    $("sweep-warnings").replaceChildren(...warnings.map((w) =>
      el("p", { "data-code": w.code }, el("b", { text: "⚠ " }), w.message)));
    const meta = [
      ["submitted by", s.submittedBy || "—"],
      ["created", fmtTime(s.createdAt)],
      ["finished", fmtTime(s.finishedAt)],
      ["runs", String(s.total)],
      ["max parallel", s.maxParallel === null || s.maxParallel === undefined ? "no limit" : String(s.maxParallel)],
      ["priority", String(s.priority ?? 0)],
      ["metric", `${s.metric} (${lowerFor(s) ? "lower" : "higher"} is better)`],
      ["seeds", String(s.seeds ?? 1)],
    ];
    if (s.status === "Active" && eta(s.etaS)) meta.push(["time left", `about ${eta(s.etaS)}`]);
    meta.push(...searchMeta(s));
    $("sweep-meta").replaceChildren(...meta.map(([k, v]) =>
      el("div", { "data-key": k }, el("dt", { text: k }), el("dd", { text: v, title: v }))));
    const cancel = $("sweep-cancel");
    cancel.hidden = !(me.role === "admin" || (maySubmit() && s.submittedBy === me.name));
    cancel.disabled = s.status !== "Active";
    this.renderPickers();
    this.renderTable();
    this.renderCombinations();
    this.renderCharts();
  }

  // With seeds: one row per combination, its mean ± std and n, best mean first.
  renderCombinations() {
    const s = this.sweep;
    const groups = s.combinations || [];
    $("sweep-combos-panel").hidden = (s.seeds || 1) < 2;
    if ((s.seeds || 1) < 2) return;
    const lower = lowerFor(s);
    const order = [...groups].sort((a, b) => {
      if (a.mean === b.mean) return a.index - b.index;
      if (a.mean === null) return 1;
      if (b.mean === null) return -1;
      return lower ? a.mean - b.mean : b.mean - a.mean;
    });
    const options = (s.varying || []).filter((v) => v !== "seed");
    const bestIndex = s.best ? s.best.combination : null;
    $("sweep-combos-head").replaceChildren(el("tr", {},
      el("th", { class: "num", text: "#" }), ...options.map((o) => el("th", { text: o })),
      el("th", { class: "num", text: `${s.metric} mean ± std` }), el("th", { class: "num", text: "n" }),
      el("th", { class: "num", text: `${HEADLINE} (mean)` }), el("th", { text: "warnings" })));
    $("sweep-combos-body").replaceChildren(...order.map((g) => {
      const best = g.index === bestIndex;
      const spread = typeof g.std === "number" ? ` ± ${metricValue(s.metric, g.std)}` : "";
      const mean = typeof g.mean === "number" ? `${metricValue(s.metric, g.mean)}${spread}` : "—";
      return el("tr", { "data-combination": g.index, class: best ? "best" : null },
        el("td", { class: "num", text: String(g.index) }),
        ...options.map((o) => el("td", { text: num((g.options || {})[o]) })),
        el("td", { class: "num", text: best ? `${mean} ★` : mean }),
        el("td", { class: "num", text: `${g.n}/${(g.jobs || []).length}` }),
        el("td", { class: "num", text: metricValue(HEADLINE, g.testAccDiscrete) }),
        el("td", { class: "warnmark", text: g.warnings ? `⚠ ${g.warnings}` : "" }));
    }));
  }

  columns() {
    const s = this.sweep;
    // The run's index is the API's (0-based, as in its job name and in a 422's "combination N").
    const cols = [{ key: "index", label: "#", get: (r) => r.index, num: true }];
    for (const v of s.varying || []) cols.push({ key: `opt:${v}`, label: v, get: (r) => (r.options || {})[v], opt: true });
    cols.push({ key: "status", label: "status", get: (r) => r.status });
    cols.push({ key: "epoch", label: "epoch", get: (r) => epochs(r)[0], num: true,
      show: (r) => { const [d, t] = epochs(r); return t ? `${d}/${t}` : "—"; } });
    if (s.scheduler) { // where the run is on its scheduler's rungs, or where it was stopped
      cols.push({ key: "rung", label: "rung", get: (r) => rungSort(r), num: true, show: rungText });
    }
    cols.push({ key: "value", label: s.metric, get: (r) => r.value, num: true, metric: s.metric });
    if (s.metric !== HEADLINE) { // the kept network's test accuracy, beside the metric it was kept by
      cols.push({ key: HEADLINE, label: HEADLINE, get: (r) => valueOf(r, HEADLINE), num: true, metric: HEADLINE });
    }
    // The circuit of a Succeeded run: fewer live gates first, the fastest first.
    cols.push({ key: "gatesLive", label: "live gates", get: (r) => (r.circuit || {}).gatesLive, num: true });
    cols.push({ key: "imagesPerS", label: "images/s", get: (r) => (r.circuit || {}).imagesPerS, num: true,
      desc: true, show: (r) => (r.circuit ? rate(r.circuit.imagesPerS) : "—") });
    return cols;
  }

  renderTable() {
    if (!this.sweep) return;
    const cols = this.columns();
    const head = el("tr", {}, el("th", { class: "pick" }),
      ...cols.map((c) => {
        const th = el("th", { "data-sort": c.key, class: c.num ? "num sortable" : "sortable",
          "aria-sort": this.sort.key === c.key ? (this.sort.dir > 0 ? "ascending" : "descending") : null,
          text: c.label, title: "sort" });
        th.addEventListener("click", () => {
          this.sort = { key: c.key, dir: this.sort.key === c.key ? -this.sort.dir : c.desc || (c.metric && !lowerIsBetter(c.metric)) ? -1 : 1 };
          // A metric's first click puts the best first.
          this.renderTable();
        });
        return th;
      }));
    $("sweep-head").replaceChildren(head);
    const col = cols.find((c) => c.key === this.sort.key) || cols[0];
    const order = [...this.runs].sort((a, b) => {
      const x = col.get(a), y = col.get(b);
      if (x === y) return a.index - b.index;
      if (x === null || x === undefined) return 1; // no value: last, either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * this.sort.dir;
    });
    $("sweep-body").replaceChildren(...order.map((r) => {
      const box = el("input", { type: "checkbox", class: "pick", "aria-label": `select run ${r.index}` });
      box.checked = isSelected(r.id);
      box.addEventListener("change", () => select(r.id, box.checked));
      const best = this.best && this.best.id === r.id;
      return el("tr", { "data-id": r.id, "data-status": r.status, "data-index": r.index, class: best ? "best" : null },
        el("td", { class: "pick" }, box),
        ...cols.map((c) => {
          if (c.key === "index") return el("td", { class: "num" }, el("a", { href: `#/jobs/${r.id}`, text: String(r.index) }));
          if (c.key === "status") {
            const warnings = r.warnings || [];
            return el("td", {}, el("span", { class: `pill ${r.status}`, text: r.status }),
              warnings.length ? el("span", { class: "warnmark", text: " ⚠", title: warnings.map((w) => w.message).join("\n"),
                "data-warnings": warnings.map((w) => w.code).join(",") }) : null);
          }
          const v = c.get(r);
          const text = c.show ? c.show(r) : c.metric ? metricValue(c.metric, v) : num(v);
          return el("td", { class: c.num ? "num" : null, text: best && c.key === "value" ? `${text} ★` : text });
        }));
    }));
    const n = selected().length;
    $("sweep-compare").disabled = n < 2;
    $("sweep-compare").textContent = n ? `Compare ${n} selected` : "Compare selected";
  }

  renderPickers() {
    const s = this.sweep;
    const metrics = [...new Set([s.metric, "val_acc_discrete", HEADLINE, "test_acc", "train_loss", "train_acc"])];
    const ms = $("sweep-chart-metric");
    if (ms.options.length !== metrics.length) {
      ms.replaceChildren(...metrics.map((m) => el("option", { value: m, text: m })));
      ms.onchange = () => { this.chartMetric = ms.value; this.renderCharts(); };
    }
    ms.value = this.chartMetric;
    const xs = $("sweep-scatter-x");
    const varying = s.varying || [];
    if ([...xs.options].map((o) => o.value).join() !== varying.join()) {
      xs.replaceChildren(...varying.map((v) => el("option", { value: v, text: v })));
      xs.onchange = () => { this.scatterX = xs.value; this.renderCharts(); };
    }
    if (this.scatterX) xs.value = this.scatterX;
    $("sweep-scatter-panel").hidden = varying.length === 0;
  }

  // With seeds: each combination's mean per epoch over its runs, with a band of ± one
  // standard deviation; else every run.
  chartSeries(metric) {
    const s = this.sweep;
    if ((s.seeds || 1) < 2) {
      return [...this.runs].sort((a, b) => a.index - b.index).map((r) => ({
        label: `#${r.index} ${Object.entries(r.options || {}).map(([k, v]) => `${k}=${num(v)}`).join(" ")}`,
        rows: this.rows.get(r.id) || [],
        highlight: Boolean(this.best && this.best.id === r.id),
      }));
    }
    return (s.combinations || []).map((g) => {
      const byEpoch = new Map();
      for (const id of g.jobs || []) {
        for (const row of this.rows.get(id) || []) {
          if (typeof row[metric] !== "number") continue;
          if (!byEpoch.has(row.epoch)) byEpoch.set(row.epoch, []);
          byEpoch.get(row.epoch).push(row[metric]);
        }
      }
      const rows = [];
      const spread = new Map();
      for (const [epoch, vs] of [...byEpoch].sort((a, b) => a[0] - b[0])) {
        const mean = vs.reduce((a, b) => a + b, 0) / vs.length;
        const sd = vs.length > 1 ? Math.sqrt(vs.reduce((a, v) => a + (v - mean) ** 2, 0) / (vs.length - 1)) : 0;
        rows.push({ epoch, [metric]: mean });
        spread.set(epoch, sd);
      }
      return {
        label: `#${g.index} ${Object.entries(g.options || {}).map(([k, v]) => `${k}=${num(v)}`).join(" ")} (mean of ${(g.jobs || []).length})`,
        rows, spread, highlight: Boolean(s.best && s.best.combination === g.index),
      };
    });
  }

  renderCharts() {
    if (!this.sweep) return;
    const metric = this.chartMetric;
    const runs = this.chartSeries(metric);
    $("sweep-chart-empty").hidden = runs.some((r) => r.rows.length);
    if (runs.some((r) => r.rows.length)) this.chart.draw(metric, runs);
    if (this.scatterX) {
      const s = this.sweep;
      scatter($("sweep-scatter"), this.runs.map((r) => ({
        x: (r.options || {})[this.scatterX], y: r.value, label: `#${r.index}`,
        best: Boolean(this.best && this.best.id === r.id),
      })), { xLabel: this.scatterX, yLabel: s.metric });
    }
  }

  resize() { this.chart.resize(); }

  async cancel() {
    const btn = $("sweep-cancel");
    btn.disabled = true;
    try {
      const out = await api(`sweeps/${this.id}/cancel`, { body: {} });
      this.sweep = { ...this.sweep, ...out.sweep };
      $("sweep-note").textContent = `Cancelled ${out.cancelled} pending run${out.cancelled === 1 ? "" : "s"}; ${out.stopping} stopping.`;
      $("sweep-note").hidden = false;
      this.reload();
    } catch (e) {
      this.showError(e);
      btn.disabled = false;
    }
  }

  dispose() {
    this.disposed = true;
    this.socket.close();
    this.unselect();
    this.chart.destroy();
  }
}


// A sweep's scheduler and search (docs/sweeps.md): what it is, trials done / asked / total,
// and the epochs its runs trained against a full grid's.
export function searchMeta(s) {
  const out = [];
  const sc = s.scheduler;
  if (sc) {
    out.push(["scheduler", sc.type === "asha"
      ? `ASHA, rungs from epoch ${sc.minEpochs}, ×${sc.reductionFactor}`
      : `median after epoch ${sc.graceEpochs}`]);
  }
  if (s.search && s.search.type !== "grid") {
    out.push(["search", `${s.search.type === "tpe" ? "TPE" : "random"}, seed ${s.search.seed}`]);
  }
  if (sc || s.search) {
    const p = s.progress || {};
    out.push(["trials", `${p.done ?? 0} done / ${p.asked ?? 0} asked / ${p.total ?? 0}`]);
    const c = s.compute || {};
    const grid = c.gridEpochs ? ` of ${c.gridEpochs} (${Math.round((100 * c.epochs) / c.gridEpochs)}% of a full grid)` : "";
    out.push(["compute", `${c.epochs ?? 0} epochs${grid}; ${c.stoppedEarly ?? 0} stopped early`]);
  }
  return out;
}

// "stopped at 2 (rung 1)", "stopped at 3 (median)", "→ rung 0 (epoch 1)", or "—".
export function rungText(r) {
  const st = r.stoppedEarly;
  if (st) return `stopped at ${st.epoch} (${st.rung === null || st.rung === undefined ? "median" : `rung ${st.rung}`})`;
  if (r.rung !== null && r.rung !== undefined && r.targetEpoch) return `→ rung ${r.rung} (epoch ${r.targetEpoch})`;
  return "—";
}

function rungSort(r) {
  if (r.stoppedEarly) return r.stoppedEarly.epoch;
  return r.targetEpoch ?? Infinity;
}
