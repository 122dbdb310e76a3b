/* Charts, drawn with the vendored uPlot (a classic script: `window.uPlot`): a job's own
 * metrics, and one metric overlaid for several jobs (compare, sweeps). */

import { metricValue, num } from "./format.js";

const uPlot = () => window.uPlot;
const GRID = { stroke: "#eef0f4" };
const EPOCH_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

// Distinct line colours, reused in order.
const PALETTE = ["#3656d6", "#e8590c", "#2b8a3e", "#862e9c", "#c2255c", "#1098ad", "#f08c00",
  "#5c940d", "#495057", "#d6336c", "#0b7285", "#9c36b5"];
export const colour = (i) => PALETTE[i % PALETTE.length];

export const METRIC_SERIES = [
  { key: "train_loss", label: "train loss", stroke: "#e8590c", scale: "loss" },
  { key: "train_acc", label: "train acc", stroke: "#4263eb", scale: "acc" },
  { key: "test_acc", label: "test acc (relaxed)", stroke: "#2b8a3e", scale: "acc", dash: [5, 4] },
  { key: "test_acc_discrete", label: "test acc (discrete)", stroke: "#862e9c", scale: "acc", width: 3 },
];

// The numeric keys of metric rows, other than the epoch counters and the time.
export function metricKeys(rows) {
  const keys = new Set();
  for (const r of rows) {
    for (const [k, v] of Object.entries(r)) {
      if (typeof v === "number" && !["epoch", "epochs"].includes(k)) keys.add(k);
    }
  }
  return [...keys];
}

const widthOf = (box) => Math.max(300, box.clientWidth - 16);

/* One job's metrics: loss on the left axis, accuracies on the right; the x axis grows with
 * the run. `draw(rows)` is called again with each newer epoch. */
export class JobChart {
  constructor(box, totalEpochs) {
    this.box = box;
    this.total = totalEpochs;
    this.chart = null;
    this.key = "";
    this.data = null;
  }

  draw(rows) {
    const series = METRIC_SERIES.filter((s) => rows.some((r) => typeof r[s.key] === "number"));
    const data = [rows.map((r) => r.epoch), ...series.map((s) => rows.map((r) => r[s.key] ?? null))];
    this.box.dataset.points = String(rows.length);
    this.data = data;
    const key = series.map((s) => s.key).join(",");
    if (this.chart && this.key === key) {
      this.chart.setData(data);
      return;
    }
    this.destroy();
    this.key = key;
    const total = (rows[rows.length - 1] || {}).epochs || this.total || rows.length;
    // At least 5 epochs wide (or the whole run if shorter): the first epochs of a long run
    // are not squeezed against the left edge.
    const xRange = (u, min, max) => [Math.min(1, min), Math.max(max, Math.min(total, 5), 2)];
    // Without a cursor on the chart the legend shows each series' latest value.
    const legendValue = (u, v, si) => {
      if (v === null || v === undefined) {
        const col = this.data ? this.data[si] : null;
        v = col && col.length ? col[col.length - 1] : null;
      }
      return v === null || v === undefined ? "—" : num(v);
    };
    this.chart = new (uPlot())({
      width: widthOf(this.box),
      height: 260,
      scales: { x: { time: false, range: xRange }, acc: { range: [0, 1] }, loss: { auto: true } },
      axes: [
        { label: "epoch", stroke: "#6b7587", grid: GRID, incrs: EPOCH_INCRS },
        { scale: "loss", label: "loss", stroke: "#e8590c", grid: GRID },
        { scale: "acc", label: "accuracy", side: 1, stroke: "#2b8a3e", grid: { show: false } },
      ],
      series: [
        { label: "epoch", value: (u, v) => (v === null || v === undefined ? "latest" : String(v)) },
        ...series.map((s) => ({
          label: s.label, stroke: s.stroke, width: s.width || 2, scale: s.scale, dash: s.dash,
          points: { show: true, size: 6, fill: s.stroke }, value: legendValue,
        })),
      ],
      legend: { live: true },
    }, data, this.box);
  }

  resize() {
    if (this.chart) this.chart.setSize({ width: widthOf(this.box), height: 260 });
  }

  destroy() {
    if (this.chart) this.chart.destroy();
    this.chart = null;
  }
}

/* One metric for several jobs: `runs` is [{label, rows, highlight}], one line each (a
 * highlighted one thicker), on the union of their epochs. The box's `data-series` says
 * how many lines are drawn. */
export class OverlayChart {
  constructor(box, { height = 280 } = {}) {
    this.box = box;
    this.height = height;
    this.chart = null;
    this.key = "";
  }

  // `runs`: {label, rows, highlight} each; a run with `spread` (epoch -> standard deviation:
  // a sweep combination's mean over its seeds) gets a shaded band of ± one deviation.
  draw(metric, runs) {
    const xs = [...new Set(runs.flatMap((r) => r.rows.map((row) => row.epoch)))].sort((a, b) => a - b);
    const ys = runs.map((r) => {
      const at = new Map(r.rows.map((row) => [row.epoch, row[metric]]));
      return xs.map((x) => (typeof at.get(x) === "number" ? at.get(x) : null));
    });
    const banded = runs.map((r, i) => [r, i]).filter(([r]) => r.spread);
    const edges = banded.flatMap(([r, i]) => [1, -1].map((sign) => xs.map((x, k) => {
      const sd = r.spread.get(x);
      return ys[i][k] === null || typeof sd !== "number" ? null : ys[i][k] + sign * sd;
    })));
    const data = [xs, ...ys, ...edges];
    this.box.dataset.series = String(runs.length);
    this.box.dataset.metric = metric;
    this.box.dataset.points = String(ys.reduce((n, y) => n + y.filter((v) => v !== null).length, 0));
    const key = [metric, ...runs.map((r) => `${r.label}|${r.highlight ? 1 : 0}|${r.spread ? 1 : 0}`)].join("\n");
    if (this.chart && this.key === key) {
      this.chart.setData(data);
      return;
    }
    this.destroy();
    this.key = key;
    // Without a cursor on the chart the legend shows each line's last value (of the data
    // now drawn: `u.data` follows setData).
    const lastOf = (u, si) => {
      const col = u.data[si] || [];
      for (let i = col.length - 1; i >= 0; i -= 1) if (col[i] !== null) return col[i];
      return null;
    };
    this.chart = new (uPlot())({
      width: widthOf(this.box),
      height: this.height,
      scales: { x: { time: false, range: (u, min, max) => [Math.min(1, min), Math.max(max, 2)] } },
      axes: [
        { label: "epoch", stroke: "#6b7587", grid: GRID, incrs: EPOCH_INCRS },
        { label: metric, stroke: "#6b7587", grid: GRID, size: 60,
          values: (u, vals) => vals.map((v) => metricValue(metric, v)) },
      ],
      series: [
        { label: "epoch", value: (u, v) => (v === null || v === undefined ? "final" : String(v)) },
        ...runs.map((r, i) => ({
          label: r.label,
          stroke: colour(i),
          width: r.highlight ? 4 : 1.5,
          points: { show: true, size: r.highlight ? 7 : 4, fill: colour(i) },
          value: (u, v, si) => metricValue(metric, v ?? lastOf(u, si)),
        })),
        ...banded.flatMap(([r, i]) => ["+1σ", "−1σ"].map((side) => ({
          label: `${r.label} ${side}`, stroke: `${colour(i)}55`, width: 0.5, points: { show: false },
          value: (u, v) => metricValue(metric, v),
        }))),
      ],
      bands: banded.map(([, i], b) => ({
        series: [runs.length + 1 + 2 * b, runs.length + 2 + 2 * b], fill: `${colour(i)}22`,
      })),
      legend: { live: true },
    }, data, this.box);
    // The highlighted run's legend entry is marked too; tests read the chart itself from
    // the box (`box.uplot.series`).
    const entries = this.chart.root.querySelectorAll(".u-legend .u-series");
    runs.forEach((r, i) => { if (r.highlight && entries[i + 1]) entries[i + 1].classList.add("best"); });
    this.box.uplot = this.chart;
  }

  resize() {
    if (this.chart) this.chart.setSize({ width: widthOf(this.box), height: this.height });
  }

  destroy() {
    if (this.chart) this.chart.destroy();
    this.chart = null;
  }
}
