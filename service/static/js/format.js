/* How numbers, times and jobs are written on the page. */

export function fmtTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function duration(a, b) {
  if (!a) return "—";
  const s = Math.max(0, ((b ? new Date(b) : new Date()) - new Date(a)) / 1000);
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function num(v) {
  if (typeof v !== "number") return v === null || v === undefined ? "—" : String(v);
  if (Number.isInteger(v)) return String(v);
  if (Math.abs(v) >= 100) return v.toFixed(1);
  return String(Number(v.toPrecision(4))); // 0.03 stays "0.03", 0.912345 is "0.9123"
}

// 0.9512 -> "95.1%"; anything not a number -> "—".
export function pct(v) {
  return typeof v === "number" ? `${(v * 100).toFixed(1)}%` : "—";
}

// A metric's value as people read it: accuracies as percentages, the rest as numbers.
export function metricValue(key, v) {
  return /acc/.test(key) && typeof v === "number" && v >= 0 && v <= 1 ? pct(v) : num(v);
}

export function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(n >= 100 ? 0 : 1)} ${units[i]}`;
}

export function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${suffix}`;
}

// 2.4e6, "images" -> "2.40 M images/s"
export function rate(perS, unit = "") {
  if (typeof perS !== "number") return "—";
  const u = unit ? ` ${unit}/s` : "/s";
  if (perS >= 1e9) return `${(perS / 1e9).toFixed(2)} G${u}`;
  if (perS >= 1e6) return `${(perS / 1e6).toFixed(2)} M${u}`;
  if (perS >= 1e3) return `${(perS / 1e3).toFixed(1)} k${u}`;
  return `${perS.toFixed(0)}${u}`;
}

export const shortId = (id) => String(id || "").slice(-8);

export function jobName(job) {
  if (job.name) return job.name;
  const hp = job.hyperparameters || {};
  return `${hp.gateOptimizer || "job"} · ${hp.gates || "?"}×${hp.networkLayers || "?"}`;
}

// [epochs done, epochs in all] of a job, from its latest metrics or its options.
export function epochs(job) {
  const m = job.latestMetrics || {};
  const total = m.epochs || (job.hyperparameters || {}).epochs || 0;
  return [m.epoch || 0, total];
}

// A metric whose name ends in "loss" is better lower; any other higher (docs/sweeps.md).
export const lowerIsBetter = (metric) => /loss$/.test(metric);

// An ETA in seconds -> "45 s", "3 min 05 s", "2 h 07 min"; "" when unknown.
export function eta(seconds) {
  if (typeof seconds !== "number") return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

// The accuracy a job's headline shows: its kept network's (result) once it has one.
export function keptAcc(job) {
  const r = job.result;
  if (r && typeof r.test_acc_discrete === "number") {
    return { discrete: r.test_acc_discrete, relaxed: r.test_acc, epoch: r.epoch, kept: true };
  }
  const m = job.latestMetrics || {};
  if (typeof m.test_acc_discrete !== "number") return null;
  return { discrete: m.test_acc_discrete, relaxed: m.test_acc, epoch: m.epoch, kept: false };
}
