// The Switchyard console: reads the admin API with the token the operator gave (kept in
// this tab's sessionStorage) and renders it. Everything from the API is put in the page
// as text, never as markup.
"use strict";

const TOKEN_KEY = "switchyard-admin-token";
const REFRESH_MS = 2000;
const THROUGHPUT = { interval_ms: 5000, buckets: 60 };
const $ = (id) => document.getElementById(id);
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function when(ms) {
  return new Date(Number(ms)).toISOString().replace("T", " ").replace("Z", "");
}

const short = (version) => (version || "-").slice(0, 12);

class Problem extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(`/api${path}`, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    logout(body && body.detail);
  }
  if (!response.ok) throw new Problem(response.status, body);
  return body;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function loadStatus() {
  const status = await api("/status");
  $("host").textContent = `host ${status.host} · ${status.database} · brokers ${status.brokers}`;
  const rejected = status.last_rejected_edit;
  $("rejected").textContent = rejected ? `Last refused routing edit (${when(rejected.at_ms)}): ${rejected.error}` : "";
  fill($("routes-table").tBodies[0], status.routes.map((r) =>
    el("tr", { "data-route": r.key },
      el("td", { text: r.key }), el("td", { text: r.state }), el("td", { text: r.group }),
      el("td", { text: r.partitions.join(",") || "-" }), el("td", { class: "num", text: r.concurrency }),
      el("td", { class: "num", text: r.restarts }), el("td", { class: "error", text: r.last_error || "" }))));
  fill($("components-table").tBodies[0], status.components.map((c) => {
    const history = c.history.map((a) => el("li", { class: "mono",
      text: `#${a.seq} ${short(a.version)} ${a.reason} on ${a.host} at ${when(a.activated_at_ms)}` }));
    return el("tr", { "data-component": c.name },
      el("td", { text: c.name }),
      el("td", { class: "mono version", title: c.version, text: short(c.version) }),
      el("td", { class: "num", text: c.activation }),
      el("td", {}, el("ol", { class: "history" }, ...history)));
  }));
}

function sparkline(handled, dead) {
  const width = 240, height = 36;
  const peak = Math.max(1, ...handled, ...dead);
  const points = (series) => series.map((n, i) =>
    `${(i * width / Math.max(1, series.length - 1)).toFixed(1)},${(height - 2 - n * (height - 4) / peak).toFixed(1)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [k, v] of Object.entries({ class: "spark", width, height, viewBox: `0 0 ${width} ${height}` })) svg.setAttribute(k, v);
  for (const [cls, series] of [["handled", handled], ["dead", dead]]) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", cls);
    line.setAttribute("points", points(series));
    svg.append(line);
  }
  const title = document.createElementNS(ns, "title");
  title.textContent = `peak ${peak} events per ${THROUGHPUT.interval_ms / 1000} s`;
  svg.append(title);
  return svg;
}

async function loadLag() {
  const [lag, throughput] = await Promise.all([
    api("/lag"),
    api(`/throughput?interval_ms=${THROUGHPUT.interval_ms}&buckets=${THROUGHPUT.buckets}`),
  ]);
  const rates = new Map(throughput.routes.map((r) => [r.key, r]));
  $("lag-routes").replaceChildren(...lag.routes.map((r) => {
    const rate = rates.get(r.key) || { handled: [], dead_lettered: [] };
    const total = rate.handled.reduce((a, b) => a + b, 0);
    return el("div", { class: "route-lag", "data-route": r.key },
      el("h3", {}, el("span", { text: r.key }), el("span", { class: "note", text: `${r.state} · lag ${r.total_lag}` }),
        sparkline(rate.handled, rate.dead_lettered),
        el("span", { class: "note handled-total", text: `${total} handled in 5 min` })),
      r.error ? el("p", { class: "error", text: r.error }) : "",
      el("table", { class: "partitions" },
        el("thead", {}, el("tr", {}, ...["partition", "committed", "high watermark", "lag"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...r.partitions.map((p) => el("tr", { "data-partition": p.partition },
          el("td", { class: "num", text: p.partition }), el("td", { class: "num", text: p.committed }),
          el("td", { class: "num", text: p.high_watermark }), el("td", { class: "num lag", text: p.lag }))))));
  }));
}

// Reading dead letters from the broker takes a while; a slow earlier read must not
// replace the cards of a later one (and the replay outcome shown on them).
let lettersRead = 0;

async function loadLetters() {
  const read = ++lettersRead;
  $("letters-status").textContent = "Reading dead letters…";
  try {
    const view = await api("/dead-letters");
    if (read !== lettersRead) return;
    $("letters-status").textContent = `${view.letters.length} dead letter(s) in ${view.topics.join(", ") || "no topic"}` +
      (view.unread ? ` — ${view.unread} not read in time, the list is incomplete` : "") +
      (view.older ? ` — ${view.older} older not listed (each partition lists its newest 500)` : "");
    $("letters").replaceChildren(...view.letters.map(letterCard));
  } catch (err) {
    if (read !== lettersRead) return;
    $("letters-status").textContent = `Could not read the dead letters: ${err.message}`;
  }
}

// Replays by letter, kept apart from the cards: a refresh of the list while a replay is
// on its way draws new cards, which must still show how the replay went.
const replays = new Map();

function showReplay(at) {
  const state = replays.get(at);
  const card = [...document.querySelectorAll(".letter")].find((c) => c.dataset.letter === at);
  if (!state || !card) return;
  const outcome = card.querySelector(".replay-outcome");
  outcome.className = state.kind ? `replay-outcome ${state.kind}` : "replay-outcome";
  outcome.textContent = state.text;
  card.querySelector("button.replay").disabled = state.busy;
}

function letterCard(l) {
  const at = `${l.dlq_topic}[${l.partition}]@${l.offset}`;
  const outcome = el("span", { class: "replay-outcome" });
  const button = el("button", { class: "replay", text: "Replay" });
  if (!l.signed) {
    button.disabled = true;
    button.title = "not signed by a host of this database: not replayed";
  }
  button.addEventListener("click", async () => {
    replays.set(at, { busy: true, kind: "", text: "replaying…" });
    showReplay(at);
    try {
      const done = await api("/dead-letters/replay", {
        method: "POST",
        body: JSON.stringify({ topic: l.dlq_topic, partition: l.partition, offset: l.offset }),
      });
      replays.set(at, { busy: true, kind: "ok", text: `replayed to ${done.topic}[${done.partition}] for ${done.component}` });
    } catch (err) {
      replays.set(at, { busy: false, kind: "error", text: `not replayed: ${err.message}` });
    }
    showReplay(at);
  });
  const state = replays.get(at);
  if (state) {
    outcome.className = state.kind ? `replay-outcome ${state.kind}` : "replay-outcome";
    outcome.textContent = state.text;
    button.disabled = state.busy;
  }
  const requestId = (l.headers.find(([n]) => n === "switchyard-request-id") || [])[1];
  return el("div", { class: "letter", "data-letter": at },
    el("h3", {}, el("span", { class: "mono", text: at }), " ", button, " ", outcome),
    el("table", {}, el("tbody", {},
      ...[["component", l.component], ["from", `${l.source_topic}[${l.source_partition}]@${l.source_offset}`],
        ["kind", l.kind], ["reason", l.reason], ["attempts", l.attempts],
        ["failed at", l.failed_at_ms ? when(l.failed_at_ms) : "-"], ["event id", l.event_id],
        ["request id", requestId || "-"], ["key", l.key == null ? "-" : l.key],
        ["signed", l.signed ? "yes" : "no (not replayable)"]]
        .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { class: k.replace(" ", "-"), text: v }))),
      el("tr", {}, el("th", { text: (l.payload_utf8 ? "payload" : "payload (not UTF-8)") +
        (l.payload_bytes > 16384 ? ` (first 16 KiB of ${l.payload_bytes} bytes)` : "") }),
        el("td", {}, el("pre", { class: "payload", text: l.payload }))),
      el("tr", {}, el("th", { text: "headers" }),
        el("td", {}, el("pre", { class: "headers", text: l.headers.map(([n, v]) => `${n}: ${v}`).join("\n") }))))));
}

async function lookUp(requestId) {
  const table = $("timeline-table");
  $("timeline-status").textContent = "Looking up…";
  try {
    const timeline = await api(`/timeline?request=${encodeURIComponent(requestId)}`);
    const first = timeline.events.length ? timeline.events[0].handled_at_ms : 0;
    fill(table.tBodies[0], timeline.events.map((e, i) =>
      el("tr", { "data-outcome": e.outcome || "" },
        el("td", { class: "num", text: i + 1 }), el("td", { text: when(e.handled_at_ms) }),
        el("td", { class: "num", text: e.handled_at_ms - first }), el("td", { class: "component", text: e.component }),
        el("td", { class: "mono", title: e.version || "", text: short(e.version) }),
        el("td", { class: `outcome outcome-${e.outcome}`, text: e.outcome || "-" }),
        el("td", { class: "mono", text: `${e.topic}[${e.partition}]@${e.offset}` }),
        el("td", { class: "mono", text: e.event_id }), el("td", { class: "mono", text: e.trace_id || "-" }))));
    table.hidden = false;
    $("timeline-status").textContent = `${timeline.events.length} event(s) for ${timeline.request_id}` +
      (timeline.truncated ? " (the first ones only)" : "");
  } catch (err) {
    table.hidden = true;
    $("timeline-status").textContent = err.message;
  }
}

async function refresh() {
  try {
    await Promise.all([loadStatus(), loadLag()]);
  } catch (err) {
    if (err.status !== 401) $("host").textContent = `cannot reach the admin API: ${err.message}`;
  }
}

function showConsole() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  refresh();
  loadLetters();
  timer = setInterval(refresh, REFRESH_MS);
}

function logout(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    try {
      await api("/status");
      $("token").value = "";
      showConsole();
    } catch (err) {
      if (err.status !== 401) logout(`cannot reach the admin API: ${err.message}`);
    }
  });
  $("logout").addEventListener("click", () => logout());
  $("letters-refresh").addEventListener("click", loadLetters);
  $("timeline-form").addEventListener("submit", (event) => {
    event.preventDefault();
    lookUp($("request-id").value.trim());
  });
  if (sessionStorage.getItem(TOKEN_KEY)) showConsole();
});
