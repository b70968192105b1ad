// Clinician's phone view: the ward's open alerts live over /ws/alerts, acknowledge, link to history,
// browser notifications (Notification API) while the page is in the background.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const RANK = { high: 0, medium: 1, low: 2 };
const PREFIX = { high: "***", medium: "**", low: "*" };
const open = new Map();

function render() {
  const list = document.getElementById("alerts");
  const items = [...open.values()].sort((a, b) => RANK[a.priority] - RANK[b.priority] || b.ts - a.ts);
  list.replaceChildren(...items.map((a) => {
    const li = document.createElement("li");
    li.className = a.priority + (a.state === "acknowledged" ? " acknowledged" : "");
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = `${PREFIX[a.priority]} ${a.patient}` + (a.station ? ` · station ${a.station}` : "");
    const what = document.createElement("div");
    what.className = "what";
    what.textContent = `${a.message} — ${new Date(a.ts).toLocaleTimeString()} (${a.state})`;
    const row = document.createElement("div");
    row.className = "row";
    const link = document.createElement("a");
    link.href = `/patients/${encodeURIComponent(a.patient)}?token=${encodeURIComponent(token)}`;
    link.textContent = "History";
    row.appendChild(link);
    if (a.state !== "acknowledged") {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Acknowledge";
      b.setAttribute("aria-label", `Acknowledge ${a.rule} for ${a.patient}`);
      b.onclick = () => fetch(`/api/alerts/${a.id}/ack`, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
      row.appendChild(b);
    }
    li.append(who, what, row);
    return li;
  }));
  document.getElementById("empty").hidden = items.length > 0;
}

function notify(a) {
  if (!("Notification" in window) || Notification.permission !== "granted" || !document.hidden) return;
  new Notification(`${PREFIX[a.priority]} ${a.patient}`, { body: a.message, tag: a.id, requireInteraction: a.priority === "high" });
}

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/alerts?token=${encodeURIComponent(token)}`);
  const conn = document.getElementById("connection");
  ws.onopen = () => { conn.className = "conn ok"; conn.textContent = "live"; };
  ws.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    if (f.type === "hello") {
      open.clear();
      for (const p of f.patients) for (const a of p.alerts) open.set(a.id, a);
    } else if (f.type === "alert") {
      const a = f.alert;
      if (a.state === "resolved") open.delete(a.id);
      else { if (!open.has(a.id) || a.state === "escalated") notify(a); open.set(a.id, a); }
    }
    render();
  };
  ws.onclose = () => { conn.className = "conn lost"; conn.textContent = "CONNECTION LOST – reconnecting"; setTimeout(connect, 2000); };
}

document.getElementById("notify").onclick = () => { if ("Notification" in window) Notification.requestPermission(); };
render();
connect();
