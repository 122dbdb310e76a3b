/* The "New training run" form: one field per option of GET /options, a 422 shown next to
 * each bad field. A reader (role `read`) sees a note instead of the form. */

import { api } from "./api.js";
import { $ } from "./dom.js";
import { clearErrors, fillOptionFields, optionValues, showErrors } from "./form.js";
import { upsert } from "./jobs.js";
import { allOptions } from "./options.js";
import { maySubmit } from "./session.js";

export function initJobForm() {
  const form = $("submit-form");
  const banner = $("form-error");
  fillOptionFields(allOptions(), $("form-basic"), $("form-more"));
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
