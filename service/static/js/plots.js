/* Two small plots drawn without uPlot: a scatter (SVG) of a sweep's final metric against
 * one option, and horizontal bars (plain DOM) for a circuit's gate histogram. */

import { el } from "./dom.js";
import { metricValue, num } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function ticks(lo, hi, n = 5) {
  if (lo === hi) return [lo];
  return Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / (n - 1));
}

/* points: [{x, y, label, best}]. Text x values are categories, in first-seen order;
 * positive numbers spanning 20x or more go on a log axis (learning rates). */
export function scatter(box, points, { xLabel, yLabel }) {
  const W = 640, H = 300, L = 64, R = 16, T = 14, B = 44;
  const pts = points.filter((p) => typeof p.y === "number" && p.x !== undefined && p.x !== null);
  const categorical = pts.some((p) => typeof p.x !== "number");
  const cats = categorical ? [...new Set(pts.map((p) => String(p.x)))] : [];
  const xsNum = categorical ? [] : pts.map((p) => p.x);
  const logX = !categorical && xsNum.length > 0 && Math.min(...xsNum) > 0 &&
    Math.max(...xsNum) / Math.min(...xsNum) >= 20;
  const fx = (v) => (logX ? Math.log10(v) : v);
  let x0 = 0, x1 = 1;
  if (categorical) { x0 = -0.5; x1 = cats.length - 0.5; }
  else if (xsNum.length) {
    x0 = Math.min(...xsNum.map(fx)); x1 = Math.max(...xsNum.map(fx));
    const pad = (x1 - x0) * 0.08 || Math.abs(x0) * 0.1 || 1;
    x0 -= pad; x1 += pad;
  }
  const ys = pts.map((p) => p.y);
  let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
  const ypad = (y1 - y0) * 0.1 || Math.abs(y0) * 0.05 || 0.05;
  y0 -= ypad; y1 += ypad;
  const px = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
  const py = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const xOf = (p) => px(categorical ? cats.indexOf(String(p.x)) : fx(p.x));

  const g = svg("g");
  for (const v of ticks(y0 + ypad, y1 - ypad)) {
    g.append(svg("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), class: "grid" }),
      svg("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end" }, metricValue(yLabel, v)));
  }
  const xt = categorical ? cats.map((c, i) => [i, c])
    : [...new Set(xsNum)].sort((a, b) => a - b).map((v) => [fx(v), num(v)]);
  for (const [v, label] of xt) {
    g.append(svg("text", { x: px(v), y: H - B + 18, "text-anchor": "middle" }, String(label)));
  }
  g.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }),
    svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }),
    svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "label" },
      `${xLabel}${logX ? " (log)" : ""}`),
    svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", class: "label",
      transform: `rotate(-90 14 ${(T + H - B) / 2})` }, yLabel));
  // Runs with equal x are spread a little sideways so that none hides another.
  const seen = new Map();
  for (const p of pts) {
    const k = `${xOf(p)}`;
    const n = seen.get(k) || 0;
    seen.set(k, n + 1);
    const dx = categorical ? ((n % 5) - 2) * 5 : 0;
    g.append(svg("circle", {
      cx: xOf(p) + dx, cy: py(p.y), r: p.best ? 7 : 5, class: p.best ? "pt best" : "pt",
    }, svg("title", {}, `${p.label}: ${xLabel}=${p.x}, ${yLabel}=${metricValue(yLabel, p.y)}`)));
  }
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "scatter", role: "img",
    "aria-label": `${yLabel} against ${xLabel}` }, g);
  box.replaceChildren(root);
  box.dataset.points = String(pts.length);
}

/* {name: count} as one bar per entry, in the given order; zero counts are kept (a gate
 * the network never uses is worth seeing). */
export function bars(box, counts) {
  const entries = Object.entries(counts || {});
  const max = Math.max(1, ...entries.map(([, n]) => n));
  const total = entries.reduce((s, [, n]) => s + n, 0) || 1;
  box.replaceChildren(...entries.map(([name, n]) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${(100 * n) / max}%`;
    return el("div", { class: "hrow", "data-gate": name, title: `${name}: ${n} gates (${((100 * n) / total).toFixed(1)}%)` },
      el("span", { class: "hname", text: name }),
      el("span", { class: "htrack" }, bar),
      el("span", { class: "hcount", text: n.toLocaleString() }));
  }));
}
