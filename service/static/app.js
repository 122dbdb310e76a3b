/* gatequeue web page: job list (live over /ws/jobs), submit form, job view with a live log
 * (/jobs/{id}/logs/ws, resumed from the last seq after a drop) and a metric chart (uPlot).
 * Plain ES2020, no build step, no CDN: it must work offline in Chromium and Firefox. */
"use strict";

(() => {
  // Status names and which are final come from GET /options (filled before anything runs).
  const FINAL = new Set();
  const MAX_DOM_LINES = 5000; // the log view keeps this many lines; older ones are dropped
  const TOKEN_KEY = "gatequeue.token";
  const $ = (id) => document.getElementById(id);

  const state = {
    jobs: new Map(), // id -> job
    token: localStorage.getItem(TOKEN_KEY) || "",
    view: null, // the open JobView
    filter: "",
  };

  // -- API plumbing --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code;
      this.fields = err.fields || [];
    }
  }

  // fetch() with the token; an error answer throws ApiError (and a 401 asks for a token).
  async function request(path, { method = "GET", headers = {}, body } = {}) {
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const res = await fetch(new URL(path, document.baseURI), { method, headers, body });
    if (!res.ok) {
      const text = await res.text();
      let err = null;
      try { err = text ? JSON.parse(text) : null; } catch { err = null; }
      if (res.status === 401) openTokenDialog();
      throw new ApiError(res.status, err);
    }
    return res;
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await request(path, {
      method: options.method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    const text = await res.text();
    try { return text ? JSON.parse(text) : null; } catch { return null; }
  }

  // A plain link cannot carry the bearer token, so files are fetched like API calls and
  // handed to the browser as a blob.
  async function download(jobId, name) {
    const path = `jobs/${encodeURIComponent(jobId)}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}`;
    const res = await request(path);
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: name.split("/").pop() });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function wsUrl(path, params = {}) {
    const url = new URL(path, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, String(v));
    if (state.token) url.searchParams.set("token", state.token);
    return url.toString();
  }

  /* A WebSocket that reconnects with backoff until closed by us. `onopen` runs on every
   * (re)connection, so callers re-synchronise there. */
  class Socket {
    constructor(urlFn, handlers) {
      this.urlFn = urlFn;
      this.h = handlers;
      this.delay = 250;
      this.stopped = false;
      this.connect();
    }
    connect() {
      if (this.stopped) return;
      const ws = new WebSocket(this.urlFn());
      this.ws = ws;
      ws.onopen = () => { this.delay = 250; this.h.onopen && this.h.onopen(); };
      ws.onmessage = (ev) => this.h.onmessage(JSON.parse(ev.data));
      ws.onclose = (ev) => {
        if (this.stopped) return;
        const again = this.h.onclose ? this.h.onclose(ev) : true;
        if (again === false) return;
        setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 5000);
      };
    }
    close() {
      this.stopped = true;
      if (this.ws) this.ws.close(1000);
    }
  }

  // -- small helpers -------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }

  function ago(iso) {
    if (!iso) return "";
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return `${Math.floor(s)}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  function duration(a, b) {
    if (!a) return "—";
    const s = Math.max(0, ((b ? new Date(b) : new Date()) - new Date(a)) / 1000);
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function num(v) {
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4);
  }

  function epochs(job) {
    const m = job.latestMetrics || {};
    const total = m.epochs || (job.hyperparameters || {}).epochs || 0;
    return [m.epoch || 0, total];
  }

  function jobName(job) {
    if (job.name) return job.name;
    const hp = job.hyperparameters || {};
    return `${hp.gateOptimizer || "job"} · ${hp.gates || "?"}×${hp.networkLayers || "?"}`;
  }

  /* Keep the newer of two views of a job: change events and list reads can cross. */
  function newer(a, b) {
    if (!a) return b;
    if ((b.version || 0) !== (a.version || 0)) return (b.version || 0) > (a.version || 0) ? b : a;
    return (b.updatedAt || "") >= (a.updatedAt || "") ? b : a;
  }

  // -- connection indicator and token ------------------------------------------------

  function setConn(kind, text) {
    const c = $("conn");
    c.className = `conn ${kind}`;
    c.textContent = text;
  }

  function openTokenDialog() {
    const dlg = $("token-dialog");
    if (dlg.open) return;
    $("token-input").value = state.token;
    dlg.showModal();
  }

  $("token-btn").addEventListener("click", openTokenDialog);
  $("token-dialog").addEventListener("close", () => {
    const v = $("token-dialog").returnValue;
    if (v === "save") state.token = $("token-input").value.trim();
    else if (v === "clear") state.token = "";
    else return;
    if (state.token) localStorage.setItem(TOKEN_KEY, state.token);
    else localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });

  // -- job list (live) -------------------------------------------------------------------

  function upsertJob(job) {
    const merged = newer(state.jobs.get(job.id), job);
    state.jobs.set(job.id, merged);
    return merged;
  }

  let listRender = 0;
  function scheduleListRender() {
    if (listRender) return;
    listRender = requestAnimationFrame(() => { listRender = 0; renderList(); });
  }

  function renderList() {
    const ul = $("job-list");
    const current = state.view ? state.view.id : null;
    const jobs = [...state.jobs.values()]
      .filter((j) => !state.filter || j.status === state.filter)
      .sort((a, b) => (a.id < b.id ? 1 : -1)); // ObjectIds sort by creation time
    const items = jobs.map((job) => {
      const [done, total] = epochs(job);
      const pct = job.status === "Succeeded" ? 100 : total ? (100 * done) / total : 0;
      const bar = el("span");
      bar.style.width = `${pct}%`;
      const acc = (job.latestMetrics || {}).test_acc;
      return el("li", { "data-id": job.id, "data-status": job.status },
        el("a", { href: `#/jobs/${job.id}`, "aria-current": job.id === current ? "page" : null },
          el("span", { class: "jname", text: jobName(job), title: jobName(job) }),
          el("span", { class: `pill ${job.status}`, text: job.status }),
          el("span", { class: "jmeta" },
            el("code", { text: job.id.slice(-8) }),
            el("span", { text: total ? `epoch ${done}/${total}` : "" }),
            el("span", { text: typeof acc === "number" ? `acc ${(acc * 100).toFixed(1)}%` : "" }),
            el("span", { text: ago(job.createdAt) })),
          el("span", { class: `minibar${job.status === "Succeeded" ? " done" : ""}` }, bar)));
    });
    ul.replaceChildren(...items);
    $("job-list-empty").hidden = items.length > 0;
  }

  async function loadJobs() {
    try {
      const page = await api("jobs?limit=200");
      for (const job of page.jobs) upsertJob(job);
      scheduleListRender();
    } catch (e) {
      if (e.status !== 401) setConn("down", `API error: ${e.message}`);
    }
  }

  function onJobChange(job) {
    const merged = upsertJob(job);
    scheduleListRender();
    if (state.view && state.view.id === job.id) state.view.update(merged);
  }

  const openJobsSocket = () => new Socket(() => wsUrl("ws/jobs"), {
    onopen: () => { setConn("live", "live"); loadJobs(); }, // subscribe first, then read
    onmessage: (msg) => {
      if (msg.type === "job") onJobChange(msg.job);
      else if (msg.type === "resync") loadJobs();
    },
    onclose: (ev) => {
      setConn("down", ev.code === 1008 || ev.code === 4003 ? "not authorised" : "reconnecting…");
      return true;
    },
  });

  $("status-filter").addEventListener("change", (e) => {
    state.filter = e.target.value;
    renderList();
  });
  setInterval(scheduleListRender, 30000); // keeps "3m ago" honest; no network involved

  // -- submit form -----------------------------------------------------------------------

  const form = $("submit-form");

  /* One field per option of GET /options: its label, type, bounds, help and starting value
   * (the seed's where it sets one, else the default) come from the one definition of the
   * option on the server, so a new option appears here without touching the page. */
  function optionField(opt) {
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
        placeholder: opt.nullable ? "optional" : null,
        required: !opt.nullable && !opt.advanced ? true : null,
        value: start === null || start === undefined ? null : String(start),
      });
      input.defaultValue = input.value;
    }
    return el("label", { class: "field", title: opt.help },
      el("span", { text: opt.label }), input,
      el("small", { class: "field-error", "data-for": opt.name }));
  }

  async function loadOptions() {
    const meta = await api("options");
    for (const s of meta.finished) FINAL.add(s);
    const options = [...meta.training, ...meta.run];
    $("form-basic").replaceChildren(...options.filter((o) => !o.advanced).map(optionField));
    $("form-more").replaceChildren(...options.filter((o) => o.advanced).map(optionField));
    const filter = $("status-filter");
    filter.replaceChildren(el("option", { value: "", text: "all" }),
      ...meta.statuses.map((s) => el("option", { text: s })));
  }

  function formBody() {
    const body = {};
    for (const input of form.querySelectorAll("[name]")) {
      const raw = input.value.trim();
      const kind = input.dataset.kind;
      if (raw === "") {
        if (!input.placeholder) body[input.name] = raw; // a required field: let the API say
        continue;
      }
      if (kind === "int") body[input.name] = /^-?\d+$/.test(raw) ? Number(raw) : raw;
      else if (kind === "float") body[input.name] = Number.isFinite(Number(raw)) ? Number(raw) : raw;
      else body[input.name] = raw;
    }
    return body;
  }

  function clearFormErrors() {
    for (const s of form.querySelectorAll(".field-error")) s.textContent = "";
    for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
    $("form-error").hidden = true;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearFormErrors();
    const btn = $("submit-btn");
    btn.disabled = true;
    btn.textContent = "Submitting…";
    try {
      const job = await api("jobs", { method: "POST", body: formBody() });
      upsertJob(job);
      scheduleListRender();
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      const unplaced = [];
      for (const f of e.fields || []) {
        const slot = form.querySelector(`.field-error[data-for="${CSS.escape(f.field)}"]`);
        const input = form.querySelector(`[name="${CSS.escape(f.field)}"]`);
        if (slot) {
          slot.textContent = f.message;
          if (input) input.setAttribute("aria-invalid", "true");
          if (input && input.closest("details")) input.closest("details").open = true;
        } else unplaced.push(`${f.field}: ${f.message}`);
      }
      if (!e.fields || !e.fields.length || unplaced.length) {
        $("form-error").textContent = [e.message, ...unplaced].join(" — ");
        $("form-error").hidden = false;
      }
    } finally {
      btn.disabled = false;
      btn.textContent = "Submit job";
    }
  });
  form.addEventListener("reset", () => setTimeout(clearFormErrors));

  // -- job view ------------------------------------------------------------------------

  const METRIC_SERIES = [
    { key: "train_loss", label: "train loss", stroke: "#e8590c", scale: "loss" },
    { key: "train_acc", label: "train acc", stroke: "#4263eb", scale: "acc" },
    { key: "test_acc", label: "test acc", stroke: "#2b8a3e", scale: "acc" },
    { key: "test_acc_discrete", label: "test acc (discrete)", stroke: "#862e9c", scale: "acc", dash: [5, 4] },
  ];

  class JobView {
    constructor(id) {
      this.id = id;
      this.job = null;
      this.nextSeq = 0; // the seq of the next line we expect
      this.lineCount = 0; // lines rendered so far (trimmed ones included)
      this.following = true;
      this.held = []; // lines that arrived while paused
      this.queued = []; // lines waiting for the next animation frame
      this.frame = 0;
      this.ended = null;
      this.metricsEpoch = -1;
      this.chart = null;
      this.disposed = false;
      this.logEl = $("log");
      this.logEl.replaceChildren();
      this.trimmed = 0;
      this.setFollowing(true);
      $("log-state").textContent = "";
      $("chart").replaceChildren();
      $("chart").dataset.points = "0";
      $("chart-empty").hidden = false;
      $("metric-latest").textContent = "";
      this.start();
    }

    async start() {
      try {
        this.update(await api(`jobs/${this.id}`));
      } catch (e) {
        this.showError(e.status === 404 ? `No job ${this.id}.` : e.message);
        return;
      }
      if (this.disposed) return;
      this.socket = new Socket(() => wsUrl(`jobs/${this.id}/logs/ws`, { from: this.nextSeq }), {
        onopen: () => { $("log-state").textContent = this.ended ? "" : "· live"; },
        onmessage: (msg) => this.onLogMessage(msg),
        onclose: (ev) => {
          if (this.ended || this.disposed) return false;
          $("log-state").textContent = ev.code === 4001 ? "· catching up…" : "· reconnecting…";
          return true; // resume from nextSeq
        },
      });
      this.loadMetrics();
    }

    dispose() {
      this.disposed = true;
      if (this.socket) this.socket.close();
      if (this.frame) cancelAnimationFrame(this.frame);
      if (this.ticker) clearInterval(this.ticker);
      if (this.chart) this.chart.destroy();
    }

    showError(text, status = "Failed") {
      const b = $("job-error");
      b.textContent = text;
      b.className = `banner ${status === "Failed" ? "error" : "info"}`;
      b.hidden = !text;
    }

    // A running job's duration moves on without any event: redraw it each second (no
    // network involved).
    tickDuration(job) {
      const running = job.status === "Running" && !this.disposed;
      if (running && !this.ticker) {
        this.ticker = setInterval(() => this.job && this.update(this.job), 1000);
      } else if (!running && this.ticker) {
        clearInterval(this.ticker);
        this.ticker = 0;
      }
    }

    update(job) {
      if (this.disposed) return;
      this.job = newer(this.job, job);
      job = this.job;
      $("job-title").textContent = jobName(job);
      const pill = $("job-status");
      pill.className = `pill ${job.status}`;
      pill.textContent = job.status === "Running" && job.cancelRequested ? "Cancelling" : job.status;
      $("job-id").textContent = job.id;
      const [done, total] = epochs(job);
      $("job-progress").textContent = total ? `epoch ${done}/${total}` : "";
      const cancel = $("cancel-btn");
      cancel.disabled = FINAL.has(job.status) || job.cancelRequested;
      cancel.textContent = job.cancelRequested && !FINAL.has(job.status) ? "Cancel requested" : "Cancel job";
      this.showError(job.error && job.status !== "Succeeded" ? job.error : "", job.status);
      this.tickDuration(job);
      const w = job.worker;
      const meta = [
        ["created", fmtTime(job.createdAt)],
        ["started", fmtTime(job.startedAt)],
        ["finished", fmtTime(job.finishedAt)],
        ["duration", job.startedAt ? duration(job.startedAt, job.finishedAt) : "—"],
        ["worker", w ? `${w.host} · ${w.gpu}` : "—"],
        ["attempt", `${job.attempt} of ${job.maxAttempts}`],
        ["exit code", job.exitCode === null || job.exitCode === undefined ? "—" : String(job.exitCode)],
      ];
      $("job-meta").replaceChildren(...meta.map(([k, v]) =>
        el("div", {}, el("dt", { text: k }), el("dd", { text: v, title: v }))));
      $("job-hp").replaceChildren(...Object.entries(job.hyperparameters || {}).map(([k, v]) =>
        el("span", { class: "chip" }, `${k}=`, el("b", { text: String(v) }))));
      const files = job.artifacts || [];
      $("job-files").hidden = files.length === 0;
      $("job-files").replaceChildren(
        ...(files.length ? [el("span", { class: "muted", text: "files" })] : []),
        ...files.map((f) => {
          const b = el("button", { type: "button", class: "file", text: `⤓ ${f.name}`, title: `${f.length} bytes` });
          b.addEventListener("click", () => download(job.id, f.name).catch((e) => this.showError(`download failed: ${e.message}`, job.status)));
          return b;
        }));
      const m = job.latestMetrics;
      if (m && typeof m.epoch === "number" && m.epoch > this.metricsEpoch) this.loadMetrics();
    }

    // The chart reads the stored per-epoch rows whenever a newer epoch is announced on
    // /ws/jobs: one small GET per epoch, never a timer.
    async loadMetrics() {
      if (this.loadingMetrics) { this.metricsAgain = true; return; }
      this.loadingMetrics = true;
      try {
        const body = await api(`jobs/${this.id}/metrics`);
        if (!this.disposed) this.drawChart(body.metrics || []);
      } catch (e) {
        /* the next announcement retries */
      } finally {
        this.loadingMetrics = false;
        if (this.metricsAgain) { this.metricsAgain = false; this.loadMetrics(); }
      }
    }

    drawChart(rows) {
      if (!rows.length) return;
      this.metricsEpoch = Math.max(...rows.map((r) => r.epoch));
      const series = METRIC_SERIES.filter((s) => rows.some((r) => typeof r[s.key] === "number"));
      const data = [rows.map((r) => r.epoch), ...series.map((s) => rows.map((r) => r[s.key] ?? null))];
      const last = rows[rows.length - 1];
      $("metric-latest").textContent = Object.entries(last)
        .filter(([k, v]) => typeof v === "number" && !["epoch", "epochs"].includes(k))
        .map(([k, v]) => `${k}=${num(v)}`).join("  ");
      $("chart-empty").hidden = true;
      const box = $("chart");
      box.dataset.points = String(rows.length);
      const width = Math.max(300, box.clientWidth - 16);
      const key = series.map((s) => s.key).join(",");
      this.chartData = data;
      if (this.chart && this.chartKey === key) {
        this.chart.setData(data);
        return;
      }
      if (this.chart) this.chart.destroy();
      this.chartKey = key;
      const total = last.epochs || (this.job && this.job.hyperparameters.epochs) || rows.length;
      // The x axis grows with the run (at least 5 epochs wide, or the whole run if shorter),
      // so the first epochs of a long run are not squeezed against the left edge.
      const xRange = (u, min, max) => [Math.min(1, min), Math.max(max, Math.min(total, 5), 2)];
      // Without a cursor on the chart the legend shows each series' latest value.
      const legendValue = (u, v, si) => {
        if (v === null || v === undefined) {
          const col = this.chartData ? this.chartData[si] : null;
          v = col && col.length ? col[col.length - 1] : null;
        }
        return v === null || v === undefined ? "—" : num(v);
      };
      this.chart = new uPlot({
        width,
        height: 260,
        scales: {
          x: { time: false, range: xRange },
          acc: { range: [0, 1] },
          loss: { auto: true },
        },
        axes: [
          { label: "epoch", stroke: "#6b7587", grid: { stroke: "#eef0f4" },
            incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
          { scale: "loss", label: "loss", stroke: "#e8590c", grid: { stroke: "#eef0f4" } },
          { scale: "acc", label: "accuracy", side: 1, stroke: "#2b8a3e", grid: { show: false } },
        ],
        series: [
          { label: "epoch", value: (u, v) => (v === null || v === undefined ? "latest" : String(v)) },
          ...series.map((s) => ({
            label: s.label, stroke: s.stroke, width: 2, scale: s.scale, dash: s.dash,
            points: { show: true, size: 6, fill: s.stroke },
            value: legendValue,
          })),
        ],
        legend: { live: true },
      }, data, box);
    }

    // -- the log ----------------------------------------------------------------------

    onLogMessage(msg) {
      if (msg.type === "lines") {
        const skip = this.nextSeq - msg.seq; // a resumed stream may repeat lines
        if (skip >= msg.lines.length) return;
        const lines = skip > 0 ? msg.lines.slice(skip) : msg.lines;
        const seq = Math.max(msg.seq, this.nextSeq);
        this.nextSeq = seq + lines.length;
        const batch = { seq, stream: msg.stream, lines };
        if (this.following) this.enqueue(batch);
        else {
          this.held.push(batch);
          this.showHeld();
        }
      } else if (msg.type === "end") {
        this.ended = msg;
        $("log-state").textContent = "";
        this.enqueue({ end: msg });
      }
    }

    enqueue(batch) {
      this.queued.push(batch);
      if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
    }

    flush() {
      this.frame = 0;
      const log = this.logEl;
      const frag = document.createDocumentFragment();
      for (const b of this.queued) {
        if (b.end) {
          const code = b.end.exitCode === null || b.end.exitCode === undefined ? "" : ` (exit ${b.end.exitCode})`;
          frag.append(el("div", { class: "end", text: `— job ${b.end.status}${code} —` }));
          continue;
        }
        b.lines.forEach((line, i) => {
          const epoch = b.stream === "stdout" && line.startsWith("EPOCH ");
          frag.append(el("div", { class: `ln ${b.stream}${epoch ? " epoch" : ""}` },
            el("span", { class: "n", text: String(b.seq + i + 1) }),
            el("span", { class: "t", text: line })));
        });
        this.lineCount = b.seq + b.lines.length;
      }
      this.queued = [];
      log.append(frag);
      this.trim();
      $("log-count").textContent = `${this.lineCount.toLocaleString()} lines`;
      if (this.following) log.scrollTop = log.scrollHeight;
    }

    trim() {
      const log = this.logEl;
      let lines = log.querySelectorAll(".ln").length;
      if (lines <= MAX_DOM_LINES) return;
      let note = log.querySelector(".note");
      if (!note) {
        note = el("div", { class: "note" });
        log.prepend(note);
      }
      while (lines > MAX_DOM_LINES && note.nextSibling) {
        note.nextSibling.remove();
        lines -= 1;
        this.trimmed += 1;
      }
      note.textContent = `${this.trimmed.toLocaleString()} earlier lines not shown (gatequeue logs ${this.id})`;
    }

    setFollowing(on) {
      this.following = on;
      const btn = $("follow-btn");
      btn.setAttribute("aria-pressed", on ? "true" : "false");
      btn.textContent = on ? "Pause" : "Follow";
      btn.title = on ? "stop scrolling; new lines are held" : "show held lines and follow the end";
      if (on) {
        for (const b of this.held) this.enqueue(b);
        this.held = [];
        $("jump-btn").hidden = true;
      }
      this.showHeld();
    }

    showHeld() {
      const n = this.held.reduce((a, b) => a + b.lines.length, 0);
      const jump = $("jump-btn");
      jump.hidden = this.following || n === 0;
      jump.textContent = `↓ ${n.toLocaleString()} new line${n === 1 ? "" : "s"}`;
    }
  }

  $("follow-btn").addEventListener("click", () => {
    if (state.view) state.view.setFollowing(!state.view.following);
  });
  $("jump-btn").addEventListener("click", () => {
    if (state.view) state.view.setFollowing(true);
  });
  $("log").addEventListener("wheel", (e) => {
    // Scrolling up while following means the user wants to read: hold new lines.
    if (e.deltaY < 0 && state.view && state.view.following && !state.view.ended) {
      state.view.setFollowing(false);
    }
  }, { passive: true });
  $("log-wrap").addEventListener("change", (e) => $("log").classList.toggle("wrap", e.target.checked));

  $("cancel-btn").addEventListener("click", async () => {
    const view = state.view;
    if (!view) return;
    const btn = $("cancel-btn");
    btn.disabled = true;
    try {
      onJobChange(await api(`jobs/${view.id}/cancel`, { method: "POST", body: {} }));
    } catch (e) {
      view.showError(`Cancel failed: ${e.message}`);
      btn.disabled = false;
    }
  });

  // -- routing ---------------------------------------------------------------------------

  function route() {
    const m = location.hash.match(/^#\/jobs\/([0-9a-f]{24})$/);
    if (state.view && (!m || state.view.id !== m[1])) {
      state.view.dispose();
      state.view = null;
    }
    $("view-new").hidden = Boolean(m);
    $("view-job").hidden = !m;
    if (m && !state.view) state.view = new JobView(m[1]);
    document.title = m ? `gatequeue · ${m[1].slice(-8)}` : "gatequeue · new job";
    renderList();
  }

  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => {
    const v = state.view;
    if (v && v.chart) v.chart.setSize({ width: Math.max(300, $("chart").clientWidth - 16), height: 260 });
  });
  // The form and the status names come from the server first; then everything goes live.
  loadOptions()
    .catch((e) => setConn("down", `API error: ${e.message}`))
    .finally(() => {
      openJobsSocket();
      route();
    });
})();
