/* Compare two or more jobs (#/compare/<id>,<id>,...): one chart per chosen metric with a
 * line per job, and a table of only the options that differ between them (training
 * options and run options alike). Running jobs' lines grow as their epochs come in. */

import { api } from "./api.js";
import { metricKeys, OverlayChart } from "./chart.js";
import { $, el } from "./dom.js";
import { jobName, metricValue, num, shortId } from "./format.js";
import { onJobChange, upsert } from "./jobs.js";
import { allOptions, jobOptions } from "./options.js";

const DEFAULT_METRICS = ["test_acc_discrete", "train_loss"];
let chosenMetrics = null; // kept across visits: the user's last choice

// The options whose values are not all equal, as [name, [value per job]], in the order of
// GET /options (training options, then run options), unknown ones last.
export function differingOptions(jobs) {
  const all = jobs.map(jobOptions);
  const order = allOptions().map((o) => o.name);
  const rank = (n) => (order.includes(n) ? order.indexOf(n) : order.length);
  const names = [...new Set(all.flatMap((o) => Object.keys(o)))].sort((x, y) => rank(x) - rank(y));
  return names
    .map((n) => [n, all.map((o) => (n in o ? o[n] : undefined))])
    .filter(([, vs]) => new Set(vs.map((v) => JSON.stringify(v ?? null))).size > 1);
}

const label = (job) => `${jobName(job)} (${shortId(job.id)})`;

export class CompareView {
  constructor(ids) {
    this.ids = ids;
    this.jobs = new Map();
    this.rows = new Map(); // id -> metric rows
    this.charts = [];
    this.disposed = false;
    $("compare-charts").replaceChildren();
    $("compare-options").replaceChildren();
    $("compare-results").replaceChildren();
    $("compare-metrics").replaceChildren();
    $("compare-error").hidden = true;
    $("compare-title").textContent = `Comparing ${ids.length} jobs`;
    this.unlisten = onJobChange((job) => this.onChange(job));
    this.start();
  }

  async start() {
    try {
      const jobs = await Promise.all(this.ids.map((id) => api(`jobs/${id}`)));
      const metrics = await Promise.all(this.ids.map((id) => api(`jobs/${id}/metrics`)));
      if (this.disposed) return;
      jobs.forEach((j, i) => { this.jobs.set(j.id, upsert(j, { quiet: true })); this.rows.set(j.id, metrics[i].metrics); });
    } catch (e) {
      $("compare-error").textContent = e.status === 404 ? "One of these jobs does not exist." : e.message;
      $("compare-error").hidden = false;
      return;
    }
    this.renderPicker();
    this.renderCharts();
    this.renderTables();
  }

  onChange(job) {
    if (!job || !this.jobs.has(job.id) || this.disposed) return;
    const before = this.jobs.get(job.id);
    this.jobs.set(job.id, job);
    const epoch = (job.latestMetrics || {}).epoch || 0;
    if (epoch > ((before.latestMetrics || {}).epoch || 0)) {
      api(`jobs/${job.id}/metrics`).then((body) => {
        if (this.disposed) return;
        this.rows.set(job.id, body.metrics);
        this.renderCharts();
        this.renderTables();
      }).catch(() => {});
    } else if (job.status !== before.status) this.renderTables();
  }

  metrics() {
    return metricKeys([...this.rows.values()].flat()).filter((k) => k !== "ts");
  }

  renderPicker() {
    const available = this.metrics();
    if (!chosenMetrics || !chosenMetrics.some((m) => available.includes(m))) {
      chosenMetrics = DEFAULT_METRICS.filter((m) => available.includes(m));
    }
    $("compare-metrics").replaceChildren(el("span", { class: "muted", text: "metrics" }),
      ...available.map((m) => {
        const box = el("input", { type: "checkbox", value: m });
        box.checked = chosenMetrics.includes(m);
        box.addEventListener("change", () => {
          chosenMetrics = available.filter((k) => (k === m ? box.checked : chosenMetrics.includes(k)));
          this.renderCharts();
        });
        return el("label", { class: "check" }, box, ` ${m}`);
      }));
  }

  renderCharts() {
    const jobs = this.ids.map((id) => this.jobs.get(id)).filter(Boolean);
    const runs = jobs.map((j) => ({ label: label(j), rows: this.rows.get(j.id) || [] }));
    const wanted = chosenMetrics.filter((m) => this.metrics().includes(m));
    const have = this.charts.map((c) => c.metric).join(",");
    if (have !== wanted.join(",")) {
      for (const c of this.charts) c.chart.destroy();
      const panels = wanted.map((metric) => el("section", { class: "panel chart-panel" },
        el("header", { class: "panel-head" }, el("h2", { text: metric })),
        el("div", { class: "chart", "data-metric": metric })));
      $("compare-charts").replaceChildren(...panels); // in the page first: uPlot needs a width
      this.charts = panels.map((p, i) => ({ metric: wanted[i], chart: new OverlayChart(p.querySelector(".chart")) }));
    }
    for (const c of this.charts) c.chart.draw(c.metric, runs);
  }

  renderTables() {
    const jobs = this.ids.map((id) => this.jobs.get(id)).filter(Boolean);
    const head = el("tr", {}, el("th", { text: "option" }),
      ...jobs.map((j) => el("th", {}, el("a", { href: `#/jobs/${j.id}`, text: label(j) }))));
    const diff = differingOptions(jobs);
    const body = diff.map(([name, values]) => el("tr", { "data-option": name },
      el("th", { text: name }), ...values.map((v) => el("td", { text: v === undefined ? "—" : num(v) }))));
    if (!diff.length) {
      body.push(el("tr", {}, el("td", { colspan: jobs.length + 1, class: "muted", text: "Every option is the same." })));
    }
    $("compare-options").replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));

    const final = (j, k) => {
      const rows = this.rows.get(j.id) || [];
      const v = rows.length ? rows[rows.length - 1][k] : (j.latestMetrics || {})[k];
      return metricValue(k, v);
    };
    const results = [
      ["status", (j) => j.status],
      ["epochs", (j) => `${(j.latestMetrics || {}).epoch || 0}/${(j.latestMetrics || {}).epochs || j.hyperparameters.epochs || "?"}`],
      ...this.metrics().map((k) => [k === "test_acc" ? "test_acc (relaxed)" : k, (j) => final(j, k)]),
    ];
    $("compare-results").replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { text: "final" }), ...jobs.map((j) => el("th", { text: label(j) })))),
      el("tbody", {}, ...results.map(([name, fn]) => el("tr", { "data-result": name },
        el("th", { text: name }), ...jobs.map((j) => el("td", { text: fn(j) }))))));
  }

  resize() { for (const c of this.charts) c.chart.resize(); }

  dispose() {
    this.disposed = true;
    this.unlisten();
    for (const c of this.charts) c.chart.destroy();
  }
}
