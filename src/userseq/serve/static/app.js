// userseq web page: plain JavaScript over the JSON API, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { user: null, newHistory: [], history: [], recs: [], map: null, users: [] };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e6550d", "#31a354"];

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.message || data.detail || `HTTP ${r.status}`);
  return data;
}

function status(msg, ok = false) {
  const el = $("#status");
  el.textContent = msg;
  el.className = ok ? "ok" : "";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(table, rows, build) {
  const body = $(table + " tbody");
  body.replaceChildren();
  rows.forEach((row, i) => {
    const tr = document.createElement("tr");
    build(tr, row, i);
    tr.dataset.item = row.item_id;
    tr.addEventListener("click", () => {
      document.querySelectorAll("tbody tr.sel").forEach((x) => x.classList.remove("sel"));
      tr.classList.add("sel");
      showSimilar(row.item_id);
    });
    body.appendChild(tr);
  });
}

function k() {
  const v = parseInt($("#k").value, 10);
  return Number.isFinite(v) ? v : 20;
}

// ---------------------------------------------------------------- users
async function showUser(userId) {
  userId = String(userId).trim();
  if (!userId) { status("type a user id"); return; }
  status(`loading user ${userId}…`, true);
  try {
    const u = await api(`/users/${encodeURIComponent(userId)}?limit=200`);
    state.user = u.user_id;
    state.history = u.history;
    $("#user-input").value = u.user_id;
    $("#history-note").textContent = `user ${u.user_id}: ${u.history_length} events` +
      (u.history_length > u.history.length ? ` (last ${u.history.length} shown)` : "");
    fill("#history", u.history.slice().reverse(), (tr, it, i) => {
      cell(tr, u.history.length - i); cell(tr, it.item_id); cell(tr, it.title); cell(tr, (it.genres || []).join(", "));
    });
    await recommend({ user_id: u.user_id });
    showSimilarUsers(u.user_id);
  } catch (e) {
    status(e.message);
  }
}

async function showSimilarUsers(userId) {
  const list = $("#similar-users");
  list.replaceChildren();
  try {
    const r = await api(`/users/${encodeURIComponent(userId)}/similar?k=12`);
    $("#similar-users-note").textContent = `to user ${userId} (${r.index})`;
    r.users.forEach((u) => {
      const li = document.createElement("li");
      li.textContent = `${u.user_id} (${u.score.toFixed(2)})`;
      li.addEventListener("click", () => showUser(u.user_id));
      list.appendChild(li);
    });
  } catch (e) {
    $("#similar-users-note").textContent = e.message;
  }
}

// ---------------------------------------------------------------- recommendations
async function recommend(who) {
  const body = { ...who, k: k(), exclude_seen: $("#exclude-seen").checked };
  const t0 = performance.now();
  const r = await api("/recommend", body);
  const ms = performance.now() - t0;
  state.recs = r.items;
  $("#recs-note").textContent = `${r.items.length} items from ${r.history_length} events, ${r.index} index, ` +
    `${ms.toFixed(0)} ms`;
  fill("#recs", r.items, (tr, it, i) => {
    cell(tr, i + 1); cell(tr, it.item_id); cell(tr, it.title); cell(tr, it.score.toFixed(3), "num");
  });
  status(`recommended ${r.items.length} items`, true);
  drawMap();
}

async function showSimilar(itemId) {
  try {
    const r = await api(`/items/${encodeURIComponent(itemId)}/similar?k=15`);
    const title = state.titles && state.titles.get(String(itemId));
    $("#similar-note").textContent = `to item ${itemId}${title ? " · " + title : ""}`;
    fill("#similar", r.items, (tr, it) => {
      cell(tr, it.item_id); cell(tr, it.title); cell(tr, it.score.toFixed(3), "num");
    });
    state.selected = String(itemId);
    drawMap();
  } catch (e) {
    status(e.message);
  }
}

// ---------------------------------------------------------------- new user: build a history
let searchTimer = null;
function searchItems() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const q = $("#item-input").value.trim();
    const hits = $("#item-hits");
    hits.replaceChildren();
    if (!q) return;
    try {
      const r = await api(`/items?q=${encodeURIComponent(q)}&limit=12`);
      r.items.forEach((it) => {
        const li = document.createElement("li");
        li.textContent = it.title ? `${it.title} (${it.item_id})` : String(it.item_id);
        li.addEventListener("click", () => {
          state.newHistory.push(it);
          hits.replaceChildren();
          $("#item-input").value = "";
          renderNewHistory();
        });
        hits.appendChild(li);
      });
    } catch (e) {
      status(e.message);
    }
  }, 150);
}

function renderNewHistory() {
  const box = $("#new-history");
  box.replaceChildren();
  state.newHistory.forEach((it) => {
    const s = document.createElement("span");
    s.textContent = it.title || it.item_id;
    box.appendChild(s);
  });
}

async function recommendNewHistory() {
  if (!state.newHistory.length) { status("add items to the history first (search a title)"); return; }
  state.user = null;
  state.history = state.newHistory.slice();
  $("#history-note").textContent = `new user: ${state.history.length} items`;
  fill("#history", state.history.slice().reverse(), (tr, it, i) => {
    cell(tr, state.history.length - i); cell(tr, it.item_id); cell(tr, it.title); cell(tr, (it.genres || []).join(", "));
  });
  try {
    await recommend({ history: state.history.map((it) => it.item_id) });
  } catch (e) {
    status(e.message);
  }
}

// ---------------------------------------------------------------- embedding map
async function loadMap() {
  try {
    const m = await api("/map?n=5000");
    const genres = new Map();
    m.points.forEach((p) => { const g = p.genre || "unknown"; genres.set(g, (genres.get(g) || 0) + 1); });
    const order = [...genres.entries()].sort((a, b) => b[1] - a[1]).map((x) => x[0]);
    state.colors = new Map(order.map((g, i) => [g, PALETTE[i % PALETTE.length]]));
    state.map = m;
    state.titles = new Map(m.points.map((p) => [String(p.item_id), p.title]));
    $("#map-note").textContent = `${m.points.length} items, PCA (${(100 * (m.explained_variance[0] +
      m.explained_variance[1])).toFixed(0)}% of variance), coloured by first genre`;
    const legend = $("#legend");
    legend.replaceChildren();
    order.slice(0, 18).forEach((g) => {
      const li = document.createElement("li");
      const dot = document.createElement("i");
      dot.style.background = state.colors.get(g);
      li.append(dot, g);
      legend.appendChild(li);
    });
    drawMap();
  } catch (e) {
    $("#map-note").textContent = e.message;
  }
}

function toCanvas(p, c) {
  const pad = 12;
  return [pad + (p.x + 1) / 2 * (c.width - 2 * pad), pad + (1 - (p.y + 1) / 2) * (c.height - 2 * pad)];
}

function drawMap() {
  const c = $("#map");
  const m = state.map;
  if (!m) return;
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.globalAlpha = 0.55;
  m.points.forEach((p) => {
    const [x, y] = toCanvas(p, c);
    ctx.fillStyle = state.colors.get(p.genre || "unknown");
    ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
  });
  ctx.globalAlpha = 1;
  const byId = new Map(m.points.map((p) => [String(p.item_id), p]));
  const ring = (ids, color, r) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ids.forEach((id) => {
      const p = byId.get(String(id));
      if (!p) return;
      const [x, y] = toCanvas(p, c);
      ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
    });
  };
  ring(state.history.map((it) => it.item_id), "#000", 4);
  ring(state.recs.map((it) => it.item_id), "#d00", 5);
  if (state.selected) ring([state.selected], "#f90", 8);
  c.dataset.points = String(m.points.length);
}

function mapHover(ev) {
  const m = state.map;
  if (!m) return;
  const c = $("#map");
  const rect = c.getBoundingClientRect();
  const mx = (ev.clientX - rect.left) * c.width / rect.width;
  const my = (ev.clientY - rect.top) * c.height / rect.height;
  let best = null, bestD = 64;
  m.points.forEach((p) => {
    const [x, y] = toCanvas(p, c);
    const d = (x - mx) ** 2 + (y - my) ** 2;
    if (d < bestD) { bestD = d; best = p; }
  });
  $("#map-tip").textContent = best ? `${best.item_id} · ${best.title || ""} · ${best.genre || ""}` : "";
  return best;
}

// ---------------------------------------------------------------- start
async function start() {
  try {
    const info = await api("/info");
    const test = info.metrics && info.metrics.test;
    $("#info").textContent = `${info.model.name} (d=${info.model.dim}) · ${info.users.toLocaleString()} users · ` +
      `${info.items.toLocaleString()} items · ${info.index.items.kind} index` +
      (test && test["ndcg@10"] !== undefined ? ` · test NDCG@10 ${test["ndcg@10"].toFixed(4)}` : "");
    const users = await api("/users?limit=500");
    state.users = users.ids;
    const dl = $("#user-list");
    users.ids.forEach((id) => { const o = document.createElement("option"); o.value = id; dl.appendChild(o); });
  } catch (e) {
    status(e.message);
  }
  $("#user-form").addEventListener("submit", (ev) => { ev.preventDefault(); showUser($("#user-input").value); });
  $("#user-random").addEventListener("click", () => {
    if (state.users.length) showUser(state.users[Math.floor(Math.random() * state.users.length)]);
  });
  $("#item-input").addEventListener("input", searchItems);
  $("#item-form").addEventListener("submit", (ev) => ev.preventDefault());
  $("#history-go").addEventListener("click", recommendNewHistory);
  $("#history-clear").addEventListener("click", () => { state.newHistory = []; renderNewHistory(); });
  $("#map").addEventListener("mousemove", mapHover);
  $("#map").addEventListener("click", (ev) => { const p = mapHover(ev); if (p) showSimilar(p.item_id); });
  loadMap();
  const q = new URLSearchParams(location.search).get("user");
  if (q) showUser(q);
}

start();
