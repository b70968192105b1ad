// Station screen: one WebSocket (CONTRACT.md §4), tiles for up to 20 patients, focus rotating every 5 s,
// jumping to a patient with a new high-priority alert. No framework, no build, no CDN.
"use strict";
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const station = decodeURIComponent(location.pathname.split("/").pop());
const ROTATE_MS = 5000, STALE_FACTOR = 3, SPARK_MS = 5 * 60 * 1000;
const VITALS = [
  ["heart_rate", "HR", "bpm", 0.5], ["spo2", "SpO2", "%", 5], ["respiration", "RR", "/min", 1],
  ["blood_pressure", "BP", "mmHg", 3600], ["temperature", "Temp", "°C", 300], ["glucose", "Glucose", "mg/dL", 120],
];
const PRIORITY_PREFIX = { high: "***", medium: "**", low: "*" };  // IEC 60601-1-8 text prefixes
const patients = new Map();  // id -> {latest, alerts: Map, spark: {vital: [[ts, v]]}, news2, state}
let order = [], focusIndex = 0, lastRotate = Date.now(), socket = null, soundOn = false, audio = null;

document.getElementById("station-name").textContent = "· station " + station;

function patient(id) {
  if (!patients.has(id)) patients.set(id, { latest: {}, alerts: new Map(), spark: {}, news2: null, state: "unknown" });
  return patients.get(id);
}

function fmt(vital, value) {
  if (value === null || value === undefined) return "–";
  if (vital === "blood_pressure") return `${Math.round(value.systolic)}/${Math.round(value.diastolic)}`;
  if (vital === "temperature") return Number(value).toFixed(1);
  if (typeof value === "number") return Math.round(value).toString();
  return String(value);
}

function addReading(p, r) {
  const prev = p.latest[r.vital];
  if (!prev || r.ts >= prev.ts) p.latest[r.vital] = { ts: r.ts, value: r.value, at: Date.now() };
  if (r.vital === "sleep") p.state = r.value;
  const num = r.vital === "blood_pressure" ? r.value.systolic : r.value;
  if (typeof num === "number") {
    const s = (p.spark[r.vital] = p.spark[r.vital] || []);
    s.push([r.ts, num]);
    while (s.length && s[0][0] < r.ts - SPARK_MS) s.shift();
  }
}

function worstPriority(p) {
  let worst = null;
  for (const a of p.alerts.values()) {
    if (a.state === "resolved") continue;
    if (a.priority === "high") return "high";
    if (a.priority === "medium") worst = "medium";
    else if (!worst) worst = "low";
  }
  return worst;
}

function onAlert(a) {
  const p = patient(a.patient);
  const isNew = !p.alerts.has(a.id);
  if (a.state === "resolved") p.alerts.delete(a.id); else p.alerts.set(a.id, a);
  if (a.priority === "high" && (a.state === "raised" || a.state === "escalated")) {
    focusIndex = Math.max(0, order.indexOf(a.patient));  // jump to the patient in danger
    lastRotate = Date.now();
    banner(`${PRIORITY_PREFIX.high} ${a.patient}: ${a.message}`);
    if (isNew || a.state === "escalated") beep();
  }
  render();
}

function banner(text) {
  const b = document.getElementById("alarm-banner");
  b.textContent = text; b.hidden = false;
  clearTimeout(banner.t); banner.t = setTimeout(() => { b.hidden = true; }, 15000);
}

function beep() {
  if (!soundOn) return;
  audio = audio || new AudioContext();
  for (let i = 0; i < 10; i++) {  // high priority: a 10-pulse burst (2 x 5)
    const o = audio.createOscillator(), g = audio.createGain();
    const t = audio.currentTime + i * 0.15 + (i >= 5 ? 0.4 : 0);
    o.frequency.value = 880; g.gain.setValueAtTime(0.2, t); g.gain.setValueAtTime(0, t + 0.1);
    o.connect(g).connect(audio.destination); o.start(t); o.stop(t + 0.12);
  }
}

function ack(id) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "ack", alert: id }));
}

function drawSpark(canvas, points) {
  const ctx = canvas.getContext("2d");
  const w = (canvas.width = canvas.clientWidth || 200), h = (canvas.height = canvas.clientHeight || 30);
  ctx.clearRect(0, 0, w, h);
  if (!points || points.length < 2) return;
  const t0 = points[0][0], t1 = points[points.length - 1][0] || t0 + 1;
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (hi === lo) { hi += 1; lo -= 1; }
  ctx.strokeStyle = "#8fd3ff"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach(([t, v], i) => {
    const x = ((t - t0) / Math.max(1, t1 - t0)) * w, y = h - ((v - lo) / (hi - lo)) * (h - 4) - 2;
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
}

function tile(id, p, focused) {
  const el = document.createElement("article");
  const prio = worstPriority(p);
  el.className = "tile" + (focused ? " focused" : "") + (prio ? " prio-" + prio : "");
  el.setAttribute("aria-label", `Patient ${id}` + (prio ? `, ${prio} priority alert` : ""));
  const n2 = p.news2;
  el.innerHTML = `<h3><a href="/patients/${encodeURIComponent(id)}?token=${encodeURIComponent(token)}"
      style="color:inherit">${id}</a><span class="news2 ${n2 ? "band-" + n2.band : ""}"
      title="NEWS2${n2 && n2.partial ? " (partial)" : ""}">${n2 ? "NEWS2 " + n2.total + (n2.partial ? "*" : "") : ""}</span></h3>
    <div class="sleep">${p.state === "asleep" ? "asleep" : p.state === "awake" ? "awake" : ""}</div>`;
  const grid = document.createElement("div");
  grid.className = "vitals";
  for (const [vital, label, unit, period] of VITALS) {
    const l = p.latest[vital];
    const stale = !l || Date.now() - l.at > Math.max(15000, STALE_FACTOR * period * 1000);
    const v = document.createElement("div");
    v.className = "vital" + (l && stale ? " stale" : "");
    v.innerHTML = `<span class="label">${label}${l && stale ? " (no new data)" : ""}</span>
      <span><span class="value">${fmt(vital, l && l.value)}</span><span class="unit">${unit}</span></span>`;
    grid.appendChild(v);
  }
  el.appendChild(grid);
  const c = document.createElement("canvas");
  c.className = "spark"; c.setAttribute("aria-hidden", "true");
  el.appendChild(c);
  const list = document.createElement("ul");
  list.className = "alerts";
  for (const a of p.alerts.values()) {
    const li = document.createElement("li");
    li.className = a.priority + (a.state === "acknowledged" ? " acknowledged" : "");
    const text = document.createElement("span");
    text.textContent = `${PRIORITY_PREFIX[a.priority]} ${a.message}`;  // text, never markup
    li.appendChild(text);
    if (a.state !== "acknowledged") {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Acknowledge";
      b.setAttribute("aria-label", `Acknowledge ${a.rule} for ${id}`);
      b.onclick = () => ack(a.id);
      li.appendChild(b);
    }
    list.appendChild(li);
  }
  el.appendChild(list);
  requestAnimationFrame(() => drawSpark(c, p.spark.heart_rate));
  return el;
}

function render() {
  order = [...patients.keys()].sort();
  if (focusIndex >= order.length) focusIndex = 0;
  const tiles = document.getElementById("tiles");
  tiles.replaceChildren(...order.map((id, i) => tile(id, patients.get(id), i === focusIndex)));
  const focus = document.getElementById("focus");
  const id = order[focusIndex];
  focus.replaceChildren();
  if (id) {
    const h = document.createElement("h2");
    h.textContent = `Patient ${id}`;
    focus.append(h, tile(id, patients.get(id), true));
  } else focus.textContent = "No patients assigned to this station.";
}

function connection(ok, text) {
  const c = document.getElementById("connection");
  c.className = "conn " + (ok ? "ok" : "lost");
  c.textContent = text;
}

function feed(f) {  // the daemon's own view: readings arriving (broker) and being kept (database)
  const b = document.getElementById("feed-banner");
  const problems = [];
  if (f.broker === false) problems.push("NO NEW READINGS: the monitoring feed (MQTT broker) is interrupted – values shown may be old");
  if (f.database === false) problems.push("History is not being saved right now (database unavailable); live values and alerts continue");
  b.hidden = problems.length === 0;
  b.textContent = problems.join(" · ");
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/stations/${encodeURIComponent(station)}?token=${encodeURIComponent(token)}`;
  socket = new WebSocket(url);
  socket.onopen = () => connection(true, "live");
  socket.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    if (f.type === "hello") {
      if (f.feed) feed(f.feed);
      patients.clear();
      for (const p of f.patients) {
        const st = patient(p.patient);
        st.news2 = p.news2; st.state = p.patient_state;
        for (const [vital, l] of Object.entries(p.latest)) addReading(st, { vital, ts: l.ts, value: l.value });
        for (const a of p.alerts) st.alerts.set(a.id, a);
      }
    } else if (f.type === "vitals") {
      for (const r of f.readings) addReading(patient(r.patient), r);
    } else if (f.type === "alert") {
      return onAlert(f.alert);
    } else if (f.type === "score") {
      patient(f.patient).news2 = f.news2;
    } else if (f.type === "status") {
      return feed(f);
    }
    render();
  };
  socket.onclose = () => {  // never silently frozen: say so, and come back with a fresh hello
    connection(false, "CONNECTION LOST – reconnecting");
    setTimeout(connect, 2000);
  };
}

document.getElementById("sound").onclick = (e) => {
  soundOn = !soundOn;
  e.target.setAttribute("aria-pressed", String(soundOn));
  e.target.textContent = soundOn ? "Sound on" : "Enable sound";
  if (soundOn) audio = audio || new AudioContext();
};
document.addEventListener("keydown", (e) => {  // keyboard: arrows move the focus, Space pauses rotation
  if (e.key === "ArrowRight") { focusIndex = (focusIndex + 1) % Math.max(1, order.length); render(); }
  if (e.key === "ArrowLeft") { focusIndex = (focusIndex - 1 + order.length) % Math.max(1, order.length); render(); }
});
setInterval(() => {  // rotate the focus every 5 s; re-render to show stale values plainly
  if (Date.now() - lastRotate >= ROTATE_MS && order.length) {
    focusIndex = (focusIndex + 1) % order.length; lastRotate = Date.now();
  }
  render();
}, 1000);
connect();
