/* The jobs the page knows, kept current by `/ws/jobs`: every view reads them here and
 * hears of each change through `onJobChange`. */

import { api, Socket, wsUrl } from "./api.js";

export const jobs = new Map(); // id -> job
const listeners = new Set();

// fn(job) after each change of one job; fn(null) after a full re-read.
export function onJobChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(job) {
  for (const fn of listeners) fn(job);
}

/* The newer of two views of a job: change events and list reads can cross. */
export function newer(a, b) {
  if (!a) return b;
  if (!b) return a;
  if ((b.version || 0) !== (a.version || 0)) return (b.version || 0) > (a.version || 0) ? b : a;
  return (b.updatedAt || "") >= (a.updatedAt || "") ? b : a;
}

export function upsert(job, { quiet = false } = {}) {
  const merged = newer(jobs.get(job.id), job);
  jobs.set(job.id, merged);
  if (!quiet) emit(merged);
  return merged;
}

export async function loadJobs() {
  const page = await api("jobs?limit=200");
  for (const job of page.jobs) upsert(job, { quiet: true });
  emit(null);
}

// The live feed: subscribe first, then read, so no change falls between the two. `onDrop`
// runs when the socket closes (a session that ended is one reason).
export function startJobsSocket(setConn, onDrop = () => {}) {
  return new Socket(() => wsUrl("ws/jobs"), {
    onopen: () => {
      setConn("live", "live");
      loadJobs().catch((e) => setConn("down", `API error: ${e.message}`));
    },
    onmessage: (msg) => {
      if (msg.type === "job") upsert(msg.job);
      else if (msg.type === "resync") loadJobs().catch(() => {});
    },
    onclose: () => {
      setConn("down", "reconnecting…");
      onDrop();
      return true;
    },
  });
}
