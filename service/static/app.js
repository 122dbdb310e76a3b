/* gatequeue web page, the entry module: signs in (session.js), reads the options, starts
 * the live job feed and routes the hash to a view. Plain ES modules under js/, no build
 * step, no CDN: it must work offline in Chromium and Firefox. */

import { CompareView } from "./js/compare.js";
import { DatasetList, refreshDatasetNames } from "./js/datasets.js";
import { $, showView } from "./js/dom.js";
import { initJobForm } from "./js/jobform.js";
import { initJobList, setCurrentJob } from "./js/joblist.js";
import { startJobsSocket } from "./js/jobs.js";
import { initJobView, JobView } from "./js/jobview.js";
import { initLogControls } from "./js/log.js";
import { loadOptions } from "./js/options.js";
import { initSelectionBar, selected } from "./js/selection.js";
import { initSession, mayRead, showSignIn, whoami } from "./js/session.js";
import { initSweepForm } from "./js/sweepform.js";
import { SweepList } from "./js/sweeplist.js";
import { SweepView } from "./js/sweepview.js";
import { UsageView } from "./js/usage.js";

const ID = "[0-9a-f]{24}";
let view = null; // the open view object (JobView, CompareView, ...), or null

function setConn(kind, text) {
  const c = $("conn");
  c.className = `conn ${kind}`;
  c.textContent = text;
}

// [section id, class to open, its argument, title] for a hash.
function match(hash) {
  let m;
  if ((m = hash.match(new RegExp(`^#/jobs/(${ID})$`)))) return ["view-job", JobView, m[1], `job ${m[1].slice(-8)}`];
  if ((m = hash.match(new RegExp(`^#/compare/(${ID}(?:,${ID})+)$`)))) {
    return ["view-compare", CompareView, m[1].split(","), "compare"];
  }
  if (hash === "#/compare") return ["view-compare", CompareView, selected(), "compare"];
  if (hash === "#/sweeps") return ["view-sweeps", SweepList, null, "sweeps"];
  if (hash === "#/datasets") return ["view-datasets", DatasetList, null, "data sets"];
  if (hash === "#/usage") return ["view-usage", UsageView, null, "usage"];
  if (hash === "#/sweeps/new") return ["view-sweep-new", null, null, "new sweep"];
  if ((m = hash.match(new RegExp(`^#/sweeps/(${ID})$`)))) return ["view-sweep", SweepView, m[1], `sweep ${m[1].slice(-8)}`];
  return ["view-new", null, null, "new job"];
}

function route() {
  const [section, Kind, arg, title] = match(location.hash);
  const key = `${section}:${JSON.stringify(arg)}`;
  if (view && view.key !== key) {
    view.dispose();
    view = null;
  }
  showView(section);
  if (section === "view-new" || section === "view-sweep-new") refreshDatasetNames();
  if (Kind && !view) {
    view = new Kind(arg);
    view.key = key;
  }
  const area = section.includes("sweep") ? "sweeps" : section.includes("dataset") ? "datasets"
    : section.includes("usage") ? "usage" : "jobs";
  for (const a of document.querySelectorAll(".nav a")) {
    if (a.dataset.area === area) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  setCurrentJob(section === "view-job" ? arg : null);
  document.title = `gatequeue · ${title}`;
}

async function boot() {
  initSession();
  try {
    await whoami();
    await loadOptions();
  } catch (e) {
    setConn("down", `API error: ${e.message}`);
    return;
  }
  initJobList();
  initJobForm();
  initSweepForm();
  initSelectionBar();
  initLogControls();
  initJobView(() => (view instanceof JobView ? view : null));
  if (!mayRead()) {
    // Nothing can be read before signing in: no feed, no views, just the dialog.
    setConn("down", "signed out");
    showView("view-signed-out");
    showSignIn();
    return;
  }
  // A WebSocket refused for an ended session says only that it closed: ask who we are.
  startJobsSocket(setConn, () => {
    whoami().then(() => { if (!mayRead()) showSignIn("Your session has ended: sign in again."); })
      .catch(() => {});
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => { if (view && view.resize) view.resize(); });
  route();
}

boot();
