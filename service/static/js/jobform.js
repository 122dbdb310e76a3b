/* The "New training run" form: one field per option of GET /options, a 422 shown next to
 * each bad field. A reader (role `read`) sees a note instead of the form. */

import { api } from "./api.js";
import { $, el } from "./dom.js";
import { clearErrors, fillOptionFields, optionValues, showErrors } from "./form.js";
import { upsert } from "./jobs.js";
import { allOptions, meta } from "./options.js";
import { maySubmit } from "./session.js";

export function initJobForm() {
  const form = $("submit-form");
  const banner = $("form-error");
  fillOptionFields(allOptions(), $("form-basic"), $("form-more"));
  if (meta.presets.length) $("form-basic").prepend(presetField(form));
  const may = maySubmit();
  form.hidden = !may;
  $("readonly-note").hidden = may;
  for (const id of ["new-btn", "new-sweep-btn"]) $(id).hidden = !may;

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form, banner);
    const btn = $("submit-btn");
    btn.disabled = true;
    btn.textContent = "Submitting…";
    try {
      const job = upsert(await api("jobs", { body: optionValues(form) }));
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      showErrors(form, banner, e);
    } finally {
      btn.disabled = false;
      btn.textContent = "Submit job";
    }
  });
  form.addEventListener("reset", () => setTimeout(() => clearErrors(form, banner)));
}

// A <select> of the named conv configurations (trainer/presets.py): picking one fills the
// fields it sets; the fields stay editable. It has no `data-kind`, so it is not sent.
function presetField(form) {
  const note = el("small", {});
  const select = el("select", { "aria-label": "Preset" },
    el("option", { text: "(none)", value: "" }),
    ...meta.presets.map((p) => el("option", { text: p.name, value: p.name })));
  select.addEventListener("change", () => {
    const preset = meta.presets.find((p) => p.name === select.value);
    note.textContent = preset
      ? `${preset.gates.toLocaleString()} gates` +
        (preset.paperGates ? ` (paper: ${preset.paperGates.toLocaleString()})` : "") +
        ` — ${preset.note}`
      : "";
    if (!preset) return;
    for (const [name, value] of Object.entries(preset.options)) {
      const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (input) input.value = String(value);
    }
  });
  return el("label", { class: "field", title: "a named convolutional configuration" },
    el("span", { text: "Preset" }), select, note);
}
