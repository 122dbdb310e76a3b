/* A job's log: `/jobs/{id}/logs/ws?from=N` (stored lines, then live ones, then an end
 * message), resumed from the last seq seen after a drop; paused on request (new lines
 * are held), trimmed to the newest MAX_DOM_LINES lines. */

import { Socket, wsUrl } from "./api.js";
import { $, el } from "./dom.js";

const MAX_DOM_LINES = 5000;
let current = null; // the LogView on screen

export class LogView {
  constructor(jobId) {
    current = this;
    this.id = jobId;
    this.nextSeq = 0; // the seq of the next line we expect
    this.lineCount = 0;
    this.following = true;
    this.held = []; // lines that arrived while paused
    this.queued = []; // lines waiting for the next animation frame
    this.frame = 0;
    this.ended = null;
    this.trimmed = 0;
    this.disposed = false;
    this.logEl = $("log");
    this.logEl.replaceChildren();
    $("log-state").textContent = "";
    $("log-count").textContent = "";
    this.setFollowing(true);
  }

  start() {
    this.socket = new Socket(() => wsUrl(`jobs/${this.id}/logs/ws`, { from: this.nextSeq }), {
      onopen: () => { $("log-state").textContent = this.ended ? "" : "· live"; },
      onmessage: (msg) => this.onMessage(msg),
      onclose: (ev) => {
        if (this.ended || this.disposed) return false;
        $("log-state").textContent = ev.code === 4001 ? "· catching up…" : "· reconnecting…";
        return true; // resume from nextSeq
      },
    });
  }

  dispose() {
    this.disposed = true;
    if (this.socket) this.socket.close();
    if (this.frame) cancelAnimationFrame(this.frame);
    if (current === this) current = null;
  }

  onMessage(msg) {
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
    this.logEl.append(frag);
    this.trim();
    $("log-count").textContent = `${this.lineCount.toLocaleString()} lines`;
    if (this.following) this.logEl.scrollTop = this.logEl.scrollHeight;
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

export function initLogControls() {
  $("follow-btn").addEventListener("click", () => { if (current) current.setFollowing(!current.following); });
  $("jump-btn").addEventListener("click", () => { if (current) current.setFollowing(true); });
  $("log").addEventListener("wheel", (e) => {
    // Scrolling up while following means the user wants to read: hold new lines.
    if (e.deltaY < 0 && current && current.following && !current.ended) current.setFollowing(false);
  }, { passive: true });
  $("log-wrap").addEventListener("change", (e) => $("log").classList.toggle("wrap", e.target.checked));
}
