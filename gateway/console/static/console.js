// modelserve console: progressive enhancement for server-rendered pages (no inline script: CSP script-src 'self').
// Uploads with a progress bar, copy buttons, confirmations, live service charts and live run progress.
// Licence: Apache-2.0 (the project's).
"use strict";

function csrfOf(form) {
  const field = form.querySelector('input[name="csrf"]');
  return field ? field.value : "";
}

function bindConfirm() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

function bindUploads() {
  document.querySelectorAll("form[data-upload]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const wrap = form.querySelector(".progress-wrap");
      const bar = wrap.querySelector("progress");
      const text = wrap.querySelector(".progress-text");
      const error = form.querySelector(".upload-error");
      const button = form.querySelector('button[type="submit"]');
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", csrfOf(form));
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        const pct = Math.round((e.loaded / e.total) * 100);
        bar.value = pct;
        text.textContent = pct + " %";
      });
      xhr.addEventListener("load", () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (_) { body = {}; }
        if (xhr.status < 400 && body.location) {
          text.textContent = "done";
          window.location.assign(body.location);
          return;
        }
        button.disabled = false;
        error.hidden = false;
        const fields = (body.errors || []).map((e) => e.field + ": " + e.message).join("; ");
        error.textContent = (body.detail || "Upload failed (HTTP " + xhr.status + ")") + (fields ? " (" + fields + ")" : "");
        if (xhr.status === 401 && body.location) window.location.assign(body.location);
      });
      xhr.addEventListener("error", () => {
        button.disabled = false;
        error.hidden = false;
        error.textContent = "The upload was interrupted.";
      });
      error.hidden = true;
      wrap.hidden = false;
      bar.value = 0;
      button.disabled = true;
      xhr.send(new FormData(form));
    });
  });
}

function bindCopy() {
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const text = source.textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {
        const area = document.createElement("textarea"); // clipboard API needs a secure context: fall back
        area.value = text;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      const label = button.textContent;
      button.textContent = "Copied";
      window.setTimeout(() => { button.textContent = label; }, 1500);
    });
  });
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (response.status === 401) { window.location.assign("/console/sign-in"); return null; }
  if (!response.ok) return null;
  return response.json();
}

// --- live service charts: rates and latency quantiles from deltas of cumulative counters ---

function quantile(q, before, after) {
  const deltas = after.map((b, i) => [b[0], b[1] - (before[i] ? before[i][1] : 0)]);
  const total = deltas.length ? deltas[deltas.length - 1][1] : 0;
  if (total <= 0) return null;
  let prevLe = 0, prevCount = 0;
  for (const [le, count] of deltas) {
    if (count >= q * total) {
      if (le === null) return prevLe;
      const inBucket = count - prevCount;
      return prevLe + (inBucket > 0 ? (le - prevLe) * ((q * total - prevCount) / inBucket) : 0);
    }
    if (le !== null) prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

function drawChart(canvas, lines, colours) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 6;
  ctx.clearRect(0, 0, w, h);
  const all = lines.flat().filter((v) => v !== null);
  const max = (Math.max(0, ...all) || 1) * 1.15; // an idle series still gets a readable scale
  ctx.strokeStyle = "#dde1e8";
  ctx.lineWidth = 1;
  for (let i = 1; i < 4; i++) { ctx.beginPath(); ctx.moveTo(0, (h * i) / 4); ctx.lineTo(w, (h * i) / 4); ctx.stroke(); }
  ctx.fillStyle = "#687083";
  ctx.font = "10px sans-serif";
  ctx.fillText(max.toPrecision(3), 4, 11);
  lines.forEach((values, li) => {
    ctx.strokeStyle = colours[li];
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    values.forEach((v, i) => {
      if (v === null) return;
      const x = pad + ((w - 2 * pad) * i) / Math.max(1, CHART_POINTS - 1);
      const y = h - pad - ((h - 2 * pad) * v) / max;
      if (!started) { ctx.moveTo(x, y); started = true; } else { ctx.lineTo(x, y); }
      ctx.fillStyle = colours[li];
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    });
    ctx.stroke();
  });
}

const CHART_POINTS = 90; // 3 minutes at one sample every 2 s
const POLL_MS = 2000;

function bindCharts() {
  const root = document.getElementById("charts");
  if (!root) return;
  const series = { rate: [], p50: [], p99: [], errors: [] };
  let previous = null;
  const canvases = {};
  root.querySelectorAll("canvas").forEach((c) => { canvases[c.dataset.series] = c; });
  const push = (name, value) => { series[name].push(value); if (series[name].length > CHART_POINTS) series[name].shift(); };
  async function tick() {
    const sample = await getJson(root.dataset.liveUrl);
    if (sample) {
      sample.at = performance.now() / 1000;
      document.getElementById("requests-total").textContent = String(sample.requests);
      const status = document.getElementById("svc-status");
      if (status) { status.textContent = sample.status; status.className = "status status-" + sample.status; }
      if (previous) {
        const dt = Math.max(0.001, sample.at - previous.at);
        const rate = Math.max(0, sample.requests - previous.requests) / dt;
        const errors = Math.max(0, sample.errors - previous.errors) / dt;
        const p50 = quantile(0.5, previous.buckets, sample.buckets);
        const p99 = quantile(0.99, previous.buckets, sample.buckets);
        push("rate", rate); push("errors", errors);
        push("p50", p50 === null ? null : p50 * 1000); push("p99", p99 === null ? null : p99 * 1000);
        document.getElementById("rate-now").textContent = rate.toFixed(2);
        document.getElementById("errors-now").textContent = errors.toFixed(2);
        document.getElementById("latency-now").textContent =
          p50 === null ? "–" : (p50 * 1000).toFixed(1) + " / " + (p99 * 1000).toFixed(1);
        drawChart(canvases.rate, [series.rate], ["#2457c5"]);
        drawChart(canvases.latency, [series.p50, series.p99], ["#067647", "#b54708"]);
        drawChart(canvases.errors, [series.errors], ["#b42318"]);
        root.dataset.samples = String(series.rate.length);
      }
      previous = sample;
    }
    window.setTimeout(tick, POLL_MS);
  }
  tick();
}

// --- live run progress ---

function bindRun() {
  const root = document.getElementById("run");
  if (!root) return;
  const ended = ["succeeded", "failed", "stopped"];
  async function tick() {
    const run = await getJson(root.dataset.liveUrl);
    if (run) {
      document.getElementById("run-progress").value = run.progress || 0;
      document.getElementById("run-rows").textContent = String(run.rows_done);
      document.getElementById("run-total").textContent = run.rows_total === null ? "?" : String(run.rows_total);
      const status = document.getElementById("run-status");
      status.textContent = run.status;
      status.className = "status status-" + run.status;
      document.getElementById("run-log").textContent = (run.log_tail || []).join("\n");
      document.getElementById("run-result").hidden = run.status !== "succeeded";
    }
    window.setTimeout(tick, run && ended.includes(run.status) ? 5000 : 700);
  }
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  bindConfirm();
  bindUploads();
  bindCopy();
  bindCharts();
  bindRun();
});
