/* The job list in the sidebar: newest first, live, filtered by status; each row has a
 * checkbox for Compare. Its headline accuracy is the discrete network's (the one that is
 * saved), `test_acc_discrete`; the relaxed `test_acc` is only in the row's tooltip. */

import { $, el } from "./dom.js";
import { ago, epochs, eta, jobName, keptAcc, pct, shortId } from "./format.js";
import { jobs, onJobChange } from "./jobs.js";
import { meta } from "./options.js";
import { isSelected, onSelection, select } from "./selection.js";

let filter = "";
let current = null; // the id of the job on view
let frame = 0;

export function setCurrentJob(id) {
  current = id;
  render();
}

function scheduleRender() {
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
}

function accuracy(job) {
  const acc = keptAcc(job);
  if (!acc) return null;
  const relaxed = typeof acc.relaxed === "number" ? `; relaxed test_acc ${pct(acc.relaxed)}` : "";
  const kept = acc.kept ? ` of the kept epoch ${acc.epoch}` : "";
  return el("span", {
    class: "acc", text: `acc ${pct(acc.discrete)}`,
    title: `test accuracy of the discrete network${kept} (test_acc_discrete)${relaxed}`,
  });
}

// A mark for a run with warnings (the job page says what they are).
function warningMark(job) {
  const warnings = job.warnings || [];
  if (!warnings.length) return null;
  return el("span", {
    class: "warnmark", text: "⚠", title: warnings.map((w) => w.message).join("\n"),
    "aria-label": `warnings: ${warnings.map((w) => w.code).join(", ")}`,
  });
}

function row(job) {
  const [done, total] = epochs(job);
  const progress = job.status === "Succeeded" ? 100 : total ? (100 * done) / total : 0;
  const bar = el("span");
  bar.style.width = `${progress}%`;
  const box = el("input", {
    type: "checkbox", class: "pick", "aria-label": `select ${jobName(job)} to compare`,
  });
  box.checked = isSelected(job.id);
  box.addEventListener("change", () => select(job.id, box.checked));
  return el("li", { "data-id": job.id, "data-status": job.status },
    box,
    el("a", { href: `#/jobs/${job.id}`, "aria-current": job.id === current ? "page" : null },
      el("span", { class: "jname", text: jobName(job), title: jobName(job) }),
      el("span", { class: `pill ${job.status}`, text: job.status }),
      el("span", { class: "jmeta" },
        el("code", { text: shortId(job.id) }),
        total ? el("span", { text: `epoch ${done}/${total}` }) : null,
        accuracy(job),
        warningMark(job),
        job.status === "Running" && eta(job.etaS) ? el("span", { class: "eta", text: `${eta(job.etaS)} left` }) : null,
        job.submittedBy ? el("span", { class: "by", text: `by ${job.submittedBy}` }) : null,
        el("span", { class: "when", text: ago(job.createdAt) })),
      el("span", { class: `minibar${job.status === "Succeeded" ? " done" : ""}` }, bar)));
}

function render() {
  const list = [...jobs.values()]
    .filter((j) => !filter || j.status === filter)
    .sort((a, b) => (a.id < b.id ? 1 : -1)); // ObjectIds sort by creation time
  $("job-list").replaceChildren(...list.map(row));
  $("job-list-empty").hidden = list.length > 0;
}

export function initJobList() {
  const select = $("status-filter");
  select.replaceChildren(el("option", { value: "", text: "all" }),
    ...meta.statuses.map((s) => el("option", { text: s })));
  select.addEventListener("change", () => { filter = select.value; render(); });
  onJobChange(scheduleRender);
  onSelection(scheduleRender);
  setInterval(scheduleRender, 30000); // keeps "3m ago" honest; no network involved
}
