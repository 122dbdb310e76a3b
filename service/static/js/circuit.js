/* The circuit card of a Succeeded job: what the trained network compiled to (gates, live
 * gates after optimization, depth, throughput of the C library), whether the C library and
 * the Verilog agree with the network, its gate histogram and the compiled files. */

import { artifactHref } from "./api.js";
import { $, el } from "./dom.js";
import { bytes, rate } from "./format.js";
import { bars } from "./plots.js";

export const CIRCUIT_FILES = ["network.c", "network.v", "network.json"];

// The artifact called `file` (at the top or in a folder of the run's output), or null.
export function artifactNamed(job, file) {
  const all = job.artifacts || [];
  return all.find((a) => a.name === file) || all.find((a) => a.name.endsWith(`/${file}`)) || null;
}

function stat(label, value, title) {
  return el("div", { class: "stat", title }, el("dt", { text: label }), el("dd", { text: value }));
}

export function renderCircuit(job) {
  const card = $("circuit-card");
  const c = job.circuit;
  card.hidden = !(job.status === "Succeeded" && c);
  if (card.hidden) return;
  const badge = c.verified
    ? el("span", { class: "badge ok", id: "circuit-verified", text: "✓ verified" ,
      title: "the C library and the Verilog module give the network's outputs on every test sample" })
    : el("span", { class: "badge bad", id: "circuit-verified",
      text: `✗ ${c.disagreements.toLocaleString()} disagreement${c.disagreements === 1 ? "" : "s"}`,
      title: "samples where the compiled circuit and the network disagree" });
  $("circuit-badge").replaceChildren(badge);
  const removed = c.gates ? 100 * (1 - c.gatesLive / c.gates) : 0;
  $("circuit-stats").replaceChildren(
    stat("gates", c.gates.toLocaleString(), "gates of the trained network"),
    stat("live gates", c.gatesLive.toLocaleString(), `after optimization: ${removed.toFixed(1)}% removed`),
    stat("depth", String(c.depth), "longest input-to-output path, in gates"),
    stat("throughput", rate(c.imagesPerS, "images"), "single-threaded, the C library"));
  bars($("circuit-hist"), c.gateHistogram);
  const links = CIRCUIT_FILES.map((f) => [f, artifactNamed(job, f)]).filter(([, a]) => a);
  $("circuit-files").replaceChildren(...links.map(([f, a]) =>
    el("a", { class: "btn small file", href: artifactHref(job.id, a.name), download: f,
      title: `${a.name}, ${bytes(a.length)}` }, `⤓ ${f}`)));
}
