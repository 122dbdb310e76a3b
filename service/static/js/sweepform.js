/* The "New sweep" form: the base options from the same generated fields as the job form,
 * grid rows ("option = comma-separated values"), optional random samples (n, seed, one
 * row per option and its distribution), maxParallel, priority and the metric to rank by.
 * POST /sweeps; a 422 is shown next to its field or row, a bad combination in the banner. */

import { api } from "./api.js";
import { $, el } from "./dom.js";
import { clearErrors, fillOptionFields, optionValues, parseValue, showErrors } from "./form.js";
import { allOptions, optionByName } from "./options.js";
import { maySubmit } from "./session.js";

// Sweep-level fields; the base leaves them out (the sweep's own name and priority apply).
const SWEEP_LEVEL = new Set(["name", "priority"]);
const DISTRIBUTIONS = [
  ["choice", "one of"],
  ["uniform", "uniform in"],
  ["logUniform", "log-uniform in"],
  ["intUniform", "integer in"],
];
// Ranked by the validation split by default: a test metric tunes the choice to the test set.
export const METRICS = ["val_acc_discrete", "val_acc", "test_acc_discrete", "test_acc", "train_acc", "train_loss"];

const kindOf = (opt) => (opt.type === "integer" ? "int" : opt.type === "number" ? "float" : "str");
const sweepable = () => allOptions().filter((o) => !SWEEP_LEVEL.has(o.name));

function optionSelect(selectedName) {
  return el("select", { class: "opt", "aria-label": "option" },
    ...sweepable().map((o) => el("option", { value: o.name, text: o.name, selected: o.name === selectedName || null })));
}

// "40, 80,160" -> [40, 80, 160] for a number option; text options keep their words.
export function parseList(text, opt) {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "").map((s) => parseValue(s, kindOf(opt)));
}

function gridRow(name = "gates", values = "") {
  const row = el("div", { class: "sweep-row grid-row" });
  const sel = optionSelect(name);
  const input = el("input", { class: "values", type: "text", placeholder: "comma-separated values", value: values });
  const err = el("small", { class: "field-error", "data-for": `grid.${name}` });
  sel.addEventListener("change", () => { err.dataset.for = `grid.${sel.value}`; hint(); });
  const hint = () => {
    const o = optionByName(sel.value);
    input.title = o ? `${o.label}: ${o.help}` : "";
    if (o && o.choices) input.placeholder = o.choices.slice(0, 3).join(", ");
    else input.placeholder = "comma-separated values";
  };
  hint();
  const remove = el("button", { type: "button", class: "ghost small", "aria-label": "remove row", text: "✕" });
  remove.addEventListener("click", () => { row.remove(); updateCount(); });
  input.addEventListener("input", updateCount);
  sel.addEventListener("change", updateCount);
  row.append(sel, el("span", { class: "eq", text: "=" }), input, remove, err);
  return row;
}

function randomRow(name = "learningRate", dist = "logUniform", values = "") {
  const row = el("div", { class: "sweep-row random-row" });
  const sel = optionSelect(name);
  const kind = el("select", { class: "dist", "aria-label": "distribution" },
    ...DISTRIBUTIONS.map(([v, t]) => el("option", { value: v, text: t, selected: v === dist || null })));
  const input = el("input", { class: "values", type: "text", placeholder: "lo, hi  or  a, b, c", value: values });
  const err = el("small", { class: "field-error", "data-for": `random.space.${name}` });
  sel.addEventListener("change", () => { err.dataset.for = `random.space.${sel.value}`; });
  const remove = el("button", { type: "button", class: "ghost small", "aria-label": "remove row", text: "✕" });
  remove.addEventListener("click", () => { row.remove(); updateCount(); });
  sel.addEventListener("change", updateCount);
  row.append(sel, kind, input, remove, err);
  return row;
}

function gridRows() {
  return [...$("grid-rows").querySelectorAll(".grid-row")].map((r) => {
    const opt = optionByName(r.querySelector(".opt").value);
    return [opt.name, parseList(r.querySelector(".values").value, opt)];
  });
}

// After any change of the rows: the grid's size, and the base fields that a row varies
// shown as such (they are left out of `base`).
function updateCount() {
  const rows = gridRows().filter(([, vs]) => vs.length);
  const n = rows.reduce((p, [, vs]) => p * vs.length, 1);
  const seeds = Number($("sweep-seeds").value) > 1 ? Number($("sweep-seeds").value) : 1;
  const times = seeds > 1 ? ` × ${seeds} seeds` : "";
  $("grid-count").textContent = rows.length ? `${n} combination${n === 1 ? "" : "s"}${times}` : "";
  const varied = new Set([...$("sweep-form").querySelectorAll(".sweep-row select.opt")].map((s) => s.value));
  for (const input of $("sweep-base").querySelectorAll("[data-kind][name]")) {
    const on = varied.has(input.name);
    input.disabled = on;
    input.closest(".field").classList.toggle("varied", on);
    input.title = on ? "set by the grid or the random samples" : "";
  }
}

function nullableInt(id) {
  const raw = $(id).value.trim();
  return raw === "" ? null : parseValue(raw, "int");
}

export function sweepBody() {
  const grid = {};
  for (const [name, values] of gridRows()) if (values.length) grid[name] = values;
  const space = {};
  for (const r of $("random-rows").querySelectorAll(".random-row")) {
    const opt = optionByName(r.querySelector(".opt").value);
    const dist = r.querySelector(".dist").value;
    const values = parseList(r.querySelector(".values").value, opt);
    if (values.length) space[opt.name] = { [dist]: values };
  }
  const base = optionValues($("sweep-base")); // without the disabled (varied) fields
  const body = {
    name: $("sweep-name").value.trim() || null,
    base,
    grid,
    maxParallel: nullableInt("sweep-max-parallel"),
    priority: nullableInt("sweep-priority") ?? 0,
    metric: $("sweep-metric").value,
    seeds: nullableInt("sweep-seeds") ?? 1,
  };
  const n = nullableInt("random-n");
  if (Object.keys(space).length && n) {
    body.random = { n, seed: nullableInt("random-seed") ?? 0, space };
  }
  return body;
}

// Where a 422's field goes: a bad combination names job fields ("residualLayers"), shown on
// the grid row of that option if there is one, else on the base field; a bad value names
// where it is ("grid.gates.1" on the grid row, "base.gates" on the base field); the body's
// own fields ("maxParallel", "random.n") by their names.
function place(field) {
  const value = /^(?:base\.([^.]+)|grid\.([^.]+)\.\d+)$/.exec(field);
  if (value) return value[1] ?? `grid.${value[2]}`;
  const gridded = gridRows().some(([name]) => name === field);
  return gridded ? `grid.${field}` : field;
}

export function initSweepForm() {
  const form = $("sweep-form");
  const banner = $("sweep-form-error");
  form.hidden = !maySubmit();
  $("sweep-readonly-note").hidden = maySubmit();
  fillOptionFields(allOptions().filter((o) => !SWEEP_LEVEL.has(o.name)), $("sweep-base-basic"), $("sweep-base-more"));
  $("sweep-metric").replaceChildren(...METRICS.map((m) => el("option", { value: m, text: m })));
  $("grid-rows").replaceChildren(gridRow("gates", ""));
  $("add-grid-row").addEventListener("click", () => { $("grid-rows").append(gridRow(sweepable()[0].name)); updateCount(); });
  $("add-random-row").addEventListener("click", () => { $("random-rows").append(randomRow()); updateCount(); });
  $("sweep-seeds").addEventListener("input", updateCount);
  updateCount();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form, banner);
    const btn = $("sweep-submit");
    btn.disabled = true;
    try {
      const sweep = await api("sweeps", { body: sweepBody() });
      location.hash = `#/sweeps/${sweep.id}`;
    } catch (e) {
      showErrors(form, banner, e, place);
      if (e.combination) { // the message names the combination and its values
        banner.textContent = e.message;
        banner.hidden = false;
      }
    } finally {
      btn.disabled = false;
    }
  });
}
