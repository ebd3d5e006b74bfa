// Spindle's dashboard: one page that reads the REST API (/v1/...) with the user's API token,
// kept in this tab's sessionStorage, and redraws the current view every 2 s. No build step: the
// RM serves this file as it is.
"use strict";

const TOKEN_KEY = "spindle-token";
const REFRESH_MS = 2000;
const filters = { state: "", queue: "", user: "" };
let logStream = "stdout";
let drawing = false;

// A token in the URL fragment (#token=…, for links and headless browsers) moves into the
// session and out of the address bar.
(function takeTokenFromUrl() {
  const match = location.hash.match(/[#&]token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    const rest = location.hash.replace(/[#&]token=[^&]+/, "").replace(/^&/, "#");
    history.replaceState(null, "", location.pathname + (rest && rest !== "#" ? rest : "#/"));
  }
})();

const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const gb = (mb) => (mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${mb} MB`);
const res = (r) => (r ? `${r.vcores} vcores / ${gb(r.memory_mb)}` : "");
const pct = (x) => `${Math.round(x * 100)}%`;
const rate = (x) => (x >= 1e6 ? `${(x / 1e6).toFixed(2)} M/s` : x >= 1e3 ? `${(x / 1e3).toFixed(1)} k/s` : `${x.toFixed(0)}/s`);
const bytes = (n) => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KB` : `${n} B`);
const state = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;
function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}
function bar(fraction, running) {
  const width = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
  return `<div class="bar${running ? " running" : ""}" title="${running ? "running" : width + "%"}"><span style="width:${width}%"></span></div>`;
}
function table(headers, rows) {
  if (!rows.length) return `<p class="muted">none</p>`;
  return `<div class="scroll"><table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>${rows.map((r) => `<tr>${r.join("")}</tr>`).join("")}</tbody></table></div>`;
}
const td = (html, cls) => `<td${cls ? ` class="${cls}"` : ""}>${html}</td>`;

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Error("the token was refused: sign in again");
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return path.includes("/logs/") ? response.text() : response.json();
}

function showLogin(error) {
  const main = document.getElementById("main");
  main.replaceChildren(document.getElementById("login").content.cloneNode(true));
  document.getElementById("signout").hidden = true;
  if (error) document.getElementById("login-error").textContent = error;
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    draw();
  });
}

// Views ---------------------------------------------------------------------------------------

async function clusterView() {
  const [cluster, nodes, queues, apps] = await Promise.all([api("/v1/cluster"), api("/v1/nodes"), api("/v1/queues"), api("/v1/apps?limit=20")]);
  const counts = (map) => Object.entries(map).map(([k, v]) => `${v} ${esc(k)}`).join(", ") || "none";
  const totals = [
    ["Capacity", res(cluster.capacity)], ["Used", res(cluster.used)], ["Available", res(cluster.available)],
    ["Containers running", cluster.containers_running], ["Nodes", counts(cluster.nodes)], ["Apps", counts(cluster.apps)],
  ].map(([label, value]) => `<div class="total"><div class="value">${value}</div><div class="label">${label}</div></div>`).join("");
  const nodeRows = nodes.map((n) => [
    td(esc(n.node_id)), td(state(n.state)), td(esc(n.rack)), td(esc((n.labels || []).join(", "))), td(res(n.capacity)), td(res(n.used)),
    td(n.containers), td(`${Math.round(n.usage?.cpu_percent ?? 0)}% CPU, ${gb(n.usage?.memory_used_mb ?? 0)}`), td(ago(n.last_heartbeat_ms)), td(esc(n.health_report), "wrap"),
  ]);
  const queueRows = [];
  (function walk(queue, depth) {
    queueRows.push([
      td(`${"&nbsp;".repeat(depth * 4)}${esc(queue.name)}`), td(`${queue.guaranteed_percent}%`), td(`${queue.maximum_percent}%`), td(res(queue.used)),
      td(res(queue.pending)), td(queue.apps_running), td(esc((queue.users || []).map((u) => `${u.user} (${u.apps_running})`).join(", ")), "wrap"),
    ]);
    (queue.children || []).forEach((child) => walk(child, depth + 1));
  })(queues, 0);
  return `<h1>Cluster</h1>
    <div class="card totals">${totals}</div>
    <p class="muted">RM epoch ${cluster.epoch}, store ${esc(cluster.store)}, up since ${new Date(cluster.started_at_ms).toLocaleString()}</p>
    <h2>Nodes</h2>${table(["Node", "State", "Rack", "Labels", "Capacity", "Used", "Containers", "Usage", "Last heartbeat", "Health"], nodeRows)}
    <h2>Queues</h2>${table(["Queue", "Guaranteed", "Maximum", "Used", "Pending", "Apps", "Users"], queueRows)}
    <h2>Recent apps</h2>${appTable(apps)}`;
}

function appTable(apps) {
  return table(["App", "Name", "User", "Queue", "Kind", "State", "Final", "Progress", "Allocated", "Containers", "Why / diagnostics"], apps.map((a) => {
    const running = a.kind === "stream" && a.state === "RUNNING";
    return [
      td(`<a href="#/app/${esc(a.app_id)}">${esc(a.app_id)}</a>`), td(esc(a.name)), td(esc(a.user)), td(esc(a.queue)), td(esc(a.kind)),
      td(state(a.state)), td(state(a.final_status)), td(running ? `${bar(1, true)} running` : `${bar(a.progress)} ${pct(a.progress)}`),
      td(res(a.allocated)), td(a.running_containers), td(esc(a.diagnostics), "wrap"),
    ];
  }));
}

async function appsView() {
  const query = new URLSearchParams({ limit: "200" });
  for (const key of ["state", "queue", "user"]) if (filters[key]) query.set(key, filters[key]);
  const apps = await api(`/v1/apps?${query}`);
  const states = ["", "NEW", "SUBMITTED", "ACCEPTED", "RUNNING", "FINISHED", "FAILED", "KILLED"];
  return `<h1>Apps</h1>
    <div class="filters">
      <select data-filter="state">${states.map((s) => `<option value="${s}"${s === filters.state ? " selected" : ""}>${s || "any state"}</option>`).join("")}</select>
      <input data-filter="queue" placeholder="queue" value="${esc(filters.queue)}">
      <input data-filter="user" placeholder="user" value="${esc(filters.user)}">
    </div>${appTable(apps)}`;
}

async function appView(appId) {
  const [app, containers] = await Promise.all([api(`/v1/apps/${encodeURIComponent(appId)}`), api(`/v1/apps/${encodeURIComponent(appId)}/containers`)]);
  const detail = app.detail || {};
  const stream = detail.stream;
  const streaming = app.kind === "stream" && app.state === "RUNNING";
  const attempts = table(["Attempt", "AM container", "Node", "Started", "Finished", "Diagnostics"], (app.attempts || []).map((t) => [
    td(t.attempt), td(t.am_container ? `<a href="#/logs/${esc(t.am_container)}">${esc(t.am_container)}</a>` : ""), td(esc(t.node_id)),
    td(ago(t.started_at_ms)), td(ago(t.finished_at_ms)), td(esc(t.diagnostics), "wrap"),
  ]));
  const stages = (detail.stages || []).map((s) => `<div><b>${esc(s.name)}</b> ${s.succeeded}/${s.total} done, ${s.running} running ${bar(s.total ? s.succeeded / s.total : 0)}</div>`).join("");
  const counters = table(["Counter", "Value"], Object.entries(detail.counters || {}).map(([k, v]) => [td(esc(k)), td(v.toLocaleString())]));
  const containerRows = containers.map((c) => [
    td(`${esc(c.container_id)}${c.is_am ? " (AM)" : ""}`), td(esc(c.node_id)), td(state(c.state)), td(res(c.resources)),
    td(esc(c.exit_reason ?? "")), td(c.exit_code ?? ""), td(`<a href="#/logs/${esc(c.container_id)}">logs</a>`), td(esc(c.diagnostics), "wrap"),
  ]);
  return `<h1>${esc(app.name)} <span class="muted">${esc(app.app_id)}</span></h1>
    <div class="card">${state(app.state)} ${state(app.final_status)} · ${esc(app.kind)} · queue ${esc(app.queue)} · user ${esc(app.user)} · ${res(app.allocated)} in ${app.running_containers} containers
      <div style="margin-top:8px">${streaming ? `${bar(1, true)} running` : `${bar(app.progress)} ${pct(app.progress)}`}</div>
      ${app.diagnostics ? `<p class="wrap">${esc(app.diagnostics)}</p>` : ""}</div>
    ${stages ? `<h2>Stages</h2><div class="card">${stages}</div>` : ""}
    ${stream ? streamSection(stream) : ""}
    <h2>Attempts</h2>${attempts}
    ${Object.keys(detail.counters || {}).length ? `<h2>Counters</h2>${counters}` : ""}
    <h2>Containers</h2>${table(["Container", "Node", "State", "Size", "Exit", "Code", "Logs", "Diagnostics"], containerRows)}`;
}

function streamSection(stream) {
  const graph = (stream.operators || []).map((o) => `<span class="op">${esc(o.name)} <span class="muted">${esc(o.kind)} ×${o.parallelism}${o.target_parallelism !== o.parallelism ? ` → ${o.target_parallelism}` : ""}</span></span>`).join(`<span class="arrow">→</span>`);
  const rows = [];
  for (const o of stream.operators || []) {
    const sum = (f) => (o.instances || []).reduce((acc, i) => acc + (i[f] || 0), 0);
    rows.push([td(`<b>${esc(o.name)}</b>`), td(esc(o.kind)), td(o.parallelism), td(rate(sum("records_in_per_s"))), td(rate(sum("records_out_per_s"))), td(""), td(""), td(bytes(sum("state_bytes"))), td("")]);
    for (const i of o.instances || []) {
      rows.push([td(`&nbsp;&nbsp;#${i.index}`), td(""), td(""), td(rate(i.records_in_per_s || 0)), td(rate(i.records_out_per_s || 0)), td(pct(i.busy || 0)), td(pct(i.backpressured || 0)), td(bytes(i.state_bytes || 0)), td(i.source_lag ?? "")]);
    }
  }
  const cp = stream.last_checkpoint;
  const rs = stream.last_rescale;
  const lr = stream.last_restart;
  const restart = lr ? ` (last ${ago(lr.at_ms)}: ${lr.instances < lr.of_instances ? `${lr.instances} of ${lr.of_instances} instances` : "everything"}, ${esc(lr.reason)})` : "";
  return `<h2>Pipeline</h2><div class="card graph">${graph}</div>
    ${table(["Operator", "Kind", "Parallelism", "In", "Out", "Busy", "Backpressured", "State", "Source lag"], rows)}
    <div class="card">Checkpoint: ${cp ? `#${cp.id}, ${cp.duration_ms} ms, ${bytes(cp.size_bytes)}, ${ago(cp.completed_at_ms)}` : "none yet"} ·
      restarts: ${stream.restarts}${restart} · rescale: ${rs ? `${esc(rs.operator)} ${rs.from} → ${rs.to}${rs.pause_ms != null ? `, paused ${rs.pause_ms} ms` : " (in progress)"}` : "none"}</div>`;
}

async function logsView(containerId) {
  const text = await api(`/v1/containers/${encodeURIComponent(containerId)}/logs/${logStream}?tail_lines=500`);
  const app = containerId.replace(/^container_e\d+_(\d+)_(\d+)_.*$/, (_, ts, seq) => `application_${ts}_${seq}`);
  return `<h1>Logs <span class="muted">${esc(containerId)}</span></h1>
    <p><a href="#/app/${esc(app)}">← ${esc(app)}</a> ·
      <select id="log-stream">${["stdout", "stderr"].map((s) => `<option${s === logStream ? " selected" : ""}>${s}</option>`).join("")}</select>
      <span class="muted">the last 500 lines</span></p>
    <pre class="log">${esc(text) || '<span class="muted">(empty)</span>'}</pre>`;
}

// The loop -------------------------------------------------------------------------------------

async function draw() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  if (drawing) return;
  drawing = true;
  const [, view, id] = (location.hash || "#/").match(/^#\/?([^/]*)\/?(.*)$/) || [];
  const status = document.getElementById("status");
  try {
    const html = view === "apps" ? await appsView() : view === "app" ? await appView(decodeURIComponent(id)) : view === "logs" ? await logsView(decodeURIComponent(id)) : await clusterView();
    const focused = document.activeElement?.dataset?.filter;
    document.getElementById("main").innerHTML = html;
    document.getElementById("signout").hidden = false;
    if (focused) document.querySelector(`[data-filter="${focused}"]`)?.focus();
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "muted";
  } catch (error) {
    if (!sessionStorage.getItem(TOKEN_KEY)) showLogin(error.message);
    else { status.textContent = `not updated: ${error.message}`; status.className = "error"; }
  } finally {
    drawing = false;
  }
}

document.addEventListener("change", (event) => {
  const key = event.target.dataset?.filter;
  if (key) { filters[key] = event.target.value.trim(); draw(); }
  if (event.target.id === "log-stream") { logStream = event.target.value; draw(); }
});
document.getElementById("signout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin(); });
window.addEventListener("hashchange", draw);
// Not while a filter is being typed into: the redraw would take the text from under the cursor.
setInterval(() => { if (!document.hidden && !document.activeElement?.dataset?.filter) draw(); }, REFRESH_MS);
draw();
