// History review: charts of the chosen vitals over a range of the last 24 h, downsampled by the
// history API (peaks kept), zoom fetches more detail; alerts marked on the time line.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const patient = decodeURIComponent(location.pathname.split("/").pop());
const headers = { Authorization: `Bearer ${token}` };
const VITALS = { heart_rate: "Heart rate", spo2: "SpO2", respiration: "Respiration", blood_pressure: "BP (systolic)",
                 temperature: "Temperature", glucose: "Glucose", sleep: "Sleep" };
const PRIORITY_COLOUR = { high: "#e0282e", medium: "#f2c200", low: "#2fc6e0" };
let view = null, alerts = [];

document.getElementById("patient").textContent = patient;
document.getElementById("back").href = `/alerts?token=${encodeURIComponent(token)}`;
const box = document.getElementById("vitals");
for (const [v, label] of Object.entries(VITALS)) {
  const l = document.createElement("label");
  l.innerHTML = `<input type="checkbox" value="${v}" ${["heart_rate", "spo2", "respiration"].includes(v) ? "checked" : ""}> ${label}`;
  box.appendChild(l);
}

function chosen() { return [...box.querySelectorAll("input:checked")].map((i) => i.value); }

function numeric(vital, value) {
  if (vital === "blood_pressure") return value.systolic;
  if (vital === "sleep") return value === "asleep" ? 0 : 1;
  return value;
}

function draw(canvas, vital, readings) {
  const ctx = canvas.getContext("2d");
  const w = (canvas.width = canvas.clientWidth), h = (canvas.height = canvas.clientHeight);
  ctx.clearRect(0, 0, w, h);
  const x = (t) => ((t - view.from) / (view.to - view.from)) * w;
  for (const a of alerts) {  // alerts on the time line
    if (a.raised_ts < view.from || a.raised_ts > view.to) continue;
    ctx.fillStyle = PRIORITY_COLOUR[a.priority]; ctx.fillRect(x(a.raised_ts) - 1, 0, 3, h);
  }
  const pts = readings.map((r) => [r.ts, numeric(vital, r.value)]).filter((p) => typeof p[1] === "number");
  if (!pts.length) { ctx.fillStyle = "#8796a8"; ctx.fillText("no readings in this range", 8, 16); return; }
  let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
  if (hi === lo) { hi += 1; lo -= 1; }
  const y = (v) => h - 14 - ((v - lo) / (hi - lo)) * (h - 28);
  ctx.strokeStyle = "#8fd3ff"; ctx.lineWidth = 1.5; ctx.beginPath();
  pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  ctx.stroke();
  ctx.fillStyle = "#e8eef5"; ctx.font = "12px system-ui";
  ctx.fillText(hi.toFixed(1), 4, 12); ctx.fillText(lo.toFixed(1), 4, h - 2);
}

async function load() {
  const charts = document.getElementById("charts");
  charts.replaceChildren();
  const a = await fetch(`/api/alerts?patient=${encodeURIComponent(patient)}`, { headers });
  alerts = a.ok ? (await a.json()).alerts : [];
  for (const vital of chosen()) {
    const section = document.createElement("section");
    section.className = "chart";
    const h = document.createElement("h2");
    h.textContent = VITALS[vital];
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    section.append(h, canvas);
    charts.appendChild(section);
    const points = Math.max(100, Math.round(canvas.clientWidth || 800));
    const r = await fetch(`/api/patients/${encodeURIComponent(patient)}/history?vital=${vital}&from=${view.from}&to=${view.to}&max_points=${points}`, { headers });
    const body = r.ok ? await r.json() : { readings: [] };
    canvas.setAttribute("aria-label", `${VITALS[vital]}: ${body.readings.length} points`);
    Object.assign(canvas.dataset, { vital, from: view.from, to: view.to, maxPoints: points, points: body.readings.length });
    draw(canvas, vital, body.readings);
    zoomable(canvas);
  }
  const list = document.getElementById("alerts");
  list.replaceChildren(...alerts.filter((x) => x.raised_ts >= view.from && x.raised_ts <= view.to).map((x) => {
    const li = document.createElement("li");
    const d = document.createElement("details");
    const s = document.createElement("summary");
    s.textContent = `${new Date(x.raised_ts).toLocaleString()} · ${x.priority} · ${x.message} (${x.state})`;
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(x.explanation, null, 2);
    d.append(s, pre); li.appendChild(d);
    return li;
  }));
}

function zoomable(canvas) {
  let start = null;
  canvas.onmousedown = (e) => { start = e.offsetX; };
  canvas.onmouseup = (e) => {
    if (start === null || Math.abs(e.offsetX - start) < 5) { start = null; return; }
    const w = canvas.clientWidth, span = view.to - view.from;
    const a = view.from + (Math.min(start, e.offsetX) / w) * span, b = view.from + (Math.max(start, e.offsetX) / w) * span;
    view = { from: Math.round(a), to: Math.round(b) }; start = null; load();
  };
}

function reset() {
  const now = Date.now();
  view = { from: now - Number(document.getElementById("range").value), to: now };
  load();
}
async function snapshot() {  // the shown vitals and range, to MyMedicalData; its upload state is reported
  const state = document.getElementById("snapshot-state");
  state.textContent = "creating…";
  const r = await fetch(`/api/patients/${encodeURIComponent(patient)}/snapshots`, {
    method: "POST", headers: { ...headers, "Content-Type": "application/json" },
    body: JSON.stringify({ vitals: chosen(), from: view.from, to: view.to }),
  });
  const body = await r.json();
  if (!r.ok) { state.textContent = `not created: ${body.detail || r.status}`; return; }
  const poll = async () => {
    const s = await (await fetch(`/api/snapshots/${body.id}`, { headers })).json();
    state.textContent = s.delivered ? `snapshot ${s.id.slice(0, 8)} delivered (${s.observations} observations)`
      : `snapshot ${s.id.slice(0, 8)} pending, attempt ${s.attempts}${s.last_error ? ": " + s.last_error : ""}`;
    if (!s.delivered) setTimeout(poll, 2000);
  };
  poll();
}
document.getElementById("snapshot").onclick = snapshot;
document.getElementById("range").onchange = reset;
document.getElementById("zoom-out").onclick = reset;
box.onchange = load;
reset();
