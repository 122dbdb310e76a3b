/* What a job request may carry and the status names: `GET /options`, read once at start.
 * The forms are generated from it, so a new option appears without touching the page. */

import { api } from "./api.js";

export const meta = {
  training: [], // [{name, type, label, help, default, seed, minimum, maximum, choices, ...}]
  run: [],
  presets: [], // [{name, note, gates, paperGates, options}]: named conv configurations
  statuses: [],
  finished: new Set(),
};

export async function loadOptions() {
  const m = await api("options");
  meta.training = m.training;
  // An object option (`notify`: a webhook) has no form field: the API and the CLI set it.
  meta.run = m.run.filter((o) => o.type !== "object");
  meta.presets = m.presets || [];
  meta.statuses = m.statuses;
  meta.finished = new Set(m.finished);
  return meta;
}

export const isFinal = (status) => meta.finished.has(status);
export const allOptions = () => [...meta.training, ...meta.run];
export const optionByName = (name) => allOptions().find((o) => o.name === name);

// A job's options as one flat object: its training options and its run options (which
// are stored at the job's top level).
export function jobOptions(job) {
  const out = { ...(job.hyperparameters || {}) };
  for (const o of meta.run) if (o.name in job) out[o.name] = job[o.name];
  return out;
}
