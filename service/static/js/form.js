/* The option fields of a form, generated from GET /options: each option's label, type,
 * bounds, help and starting value (the seed's where it sets one, else the default). Used
 * by the job form and, for the base options, by the sweep form. */

import { DATALIST_ID } from "./datasets.js";
import { el } from "./dom.js";

export function optionField(opt) {
  const start = opt.seed ?? opt.default;
  const kind = opt.type === "integer" ? "int" : opt.type === "number" ? "float" : "str";
  let input;
  if (opt.choices) {
    input = el("select", { name: opt.name, "data-kind": "str" },
      ...opt.choices.map((c) => el("option", { text: c, selected: c === start || null })));
  } else {
    input = el("input", {
      name: opt.name,
      "data-kind": kind,
      type: kind === "str" ? "text" : "number",
      step: kind === "int" ? "1" : kind === "float" ? "any" : null,
      min: opt.minimum ?? opt.exclusiveMinimum ?? null,
      max: opt.maximum ?? null,
      maxlength: opt.maxLength ?? null,
      list: opt.name === "dataset" ? DATALIST_ID : null,
      // A null default that stands for a chosen value says which (the learning rate:
      // the gate optimizer's); left empty, the API fills it in.
      placeholder: opt.defaultText ? `default: ${opt.defaultText}` : opt.nullable ? "optional" : null,
      required: !opt.nullable && !opt.advanced ? true : null,
      value: start === null || start === undefined ? null : String(start),
    });
    input.defaultValue = input.value;
  }
  return el("label", { class: "field", title: opt.help },
    el("span", { text: opt.label }), input,
    el("small", { class: "field-error", "data-for": opt.name }));
}

// Fill `basic` and `more` (a <details>) with one field per option.
export function fillOptionFields(options, basic, more) {
  basic.replaceChildren(...options.filter((o) => !o.advanced).map(optionField));
  more.replaceChildren(...options.filter((o) => o.advanced).map(optionField));
}

// A typed value from what was typed: numbers for number fields (a malformed one is sent
// as typed, for the API to name), text otherwise.
export function parseValue(raw, kind) {
  if (kind === "int") return /^-?\d+$/.test(raw) ? Number(raw) : raw;
  if (kind === "float") return raw !== "" && Number.isFinite(Number(raw)) ? Number(raw) : raw;
  return raw;
}

// The request body of the option fields under `root`. An empty optional field is left
// out; an empty required one is sent empty, so the API says what is wrong; a disabled one
// is left out.
export function optionValues(root) {
  const body = {};
  for (const input of root.querySelectorAll("[data-kind][name]")) {
    if (input.disabled) continue;
    const raw = input.value.trim();
    if (raw === "") {
      if (!input.placeholder) body[input.name] = raw;
      continue;
    }
    body[input.name] = parseValue(raw, input.dataset.kind);
  }
  return body;
}

export function clearErrors(form, banner) {
  for (const s of form.querySelectorAll(".field-error")) s.textContent = "";
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
  banner.hidden = true;
}

/* Put each of a 422's `fields` next to its field (opening "More options" where needed);
 * what has no field of its own goes to the banner. `place(field)` may map a field name
 * to the slot it belongs in (the sweep form's grid rows). */
export function showErrors(form, banner, err, place = () => null) {
  const unplaced = [];
  for (const f of err.fields || []) {
    const name = place(f.field) || f.field;
    const slot = form.querySelector(`.field-error[data-for="${CSS.escape(name)}"]`);
    const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (slot) {
      slot.textContent = f.message;
      if (input) input.setAttribute("aria-invalid", "true");
      const details = slot.closest("details");
      if (details) details.open = true;
    } else unplaced.push(`${f.field}: ${f.message}`);
  }
  if (!err.fields || !err.fields.length || unplaced.length) {
    banner.textContent = [err.message, ...unplaced].join(" — ");
    banner.hidden = false;
  }
}
