// The EPP live view: endpoints and decisions from /api/events (server-sent events), no reloads.
"use strict";

const MAX_DECISIONS = 30;
const MAX_ROWS = 8;
const decisions = [];
const pdCounts = {};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const num = (value, digits = 0) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const pct = (value) => `${(100 * value).toFixed(0)}%`;

function bar(fraction) {
  const inner = el("span");
  inner.style.width = pct(Math.max(0, Math.min(1, fraction)));
  return el("span", {}, el("span", { class: "bar" }, inner), pct(fraction));
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? `${(value * 1000).toFixed(value < 0.01 ? 2 : 0)} ms` : `${value.toFixed(1)} s`;
}

function renderEndpoints(state) {
  document.getElementById("pool").textContent = `pool ${state.pool}`;
  const body = document.querySelector("#endpoints tbody");
  body.replaceChildren(
    ...state.endpoints.map((e) => {
      const lora = e.lora_active.length || e.lora_waiting.length
        ? `${e.lora_active.join(", ") || "–"} / ${e.lora_waiting.join(", ") || "–"} (${e.lora_max})`
        : e.lora_max ? `– (${e.lora_max})` : "–";
      return el("tr", { "data-endpoint": e.name },
        el("td", {}, e.name),
        el("td", {}, e.address),
        el("td", {}, e.role || "–"),
        el("td", { class: `health-${e.health}` }, e.health),
        el("td", { class: "num" }, e.waiting),
        el("td", { class: "num" }, e.running),
        el("td", {}, bar(e.kv_cache)),
        el("td", {}, lora),
        el("td", { class: "num", title: `${e.inflight_tokens} prompt tokens` }, e.inflight_requests),
        el("td", { title: `${e.prefix_blocks} blocks` }, bar(e.prefix_share)),
        el("td", { class: "num" }, seconds(e.metrics_age_seconds)));
    }));
  document.getElementById("endpoint-count").textContent =
    `${state.endpoints.filter((e) => e.ready).length} ready of ${state.endpoints.length}`;
  const r = state.records;
  document.getElementById("decision-stats").textContent = r.capacity
    ? `last ${r.kept} kept of ${r.capacity}, sampling ${pct(r.sample_rate)}`
    : "recording is off (--decision-records=0)";
}

function profileView(profile) {
  const scorers = profile.scorers.map((s) => s.plugin);
  const picked = new Set(profile.picked);
  const head = el("tr", {}, el("th", {}, "endpoint"),
    ...profile.scorers.map((s) => el("th", { title: `${s.type}, weight ${s.weight}` }, `${s.plugin} ×${s.weight}`)),
    el("th", {}, "total"));
  const rows = profile.endpoints.slice(0, MAX_ROWS).map((e) =>
    el("tr", { class: picked.has(e.endpoint) ? "picked" : "", "data-endpoint": e.endpoint },
      el("td", {}, e.endpoint),
      ...scorers.map((name) => el("td", { class: "num" }, num(e.scores[name], 3))),
      el("td", { class: "num total" }, num(e.total, 3))));
  const more = profile.endpoints.length > MAX_ROWS
    ? el("div", { class: "removed" }, `… ${profile.endpoints.length - MAX_ROWS} more`) : null;
  const removed = profile.filters.filter((f) => f.removed.length)
    .map((f) => el("div", { class: "removed" }, `${f.plugin} removed ${f.removed.join(", ")}`));
  const status = profile.failed ? " — found nothing" : ` → ${profile.picked.join(", ")}`;
  return el("div", { class: "profile" },
    el("div", { class: "pname" }, `profile ${profile.name}: ${profile.candidates} candidates${status}`,
      el("span", { class: "muted" }, ` (${seconds(profile.seconds)}, picker ${profile.picker ? profile.picker.plugin : "–"})`)),
    ...removed,
    profile.endpoints.length ? el("table", { class: "scores" }, el("thead", {}, head), el("tbody", {}, ...rows)) : null,
    more);
}

function decisionView(d) {
  const time = new Date(d.time * 1000).toLocaleTimeString();
  const dest = d.destination ? `→ ${d.destination.endpoint} (${d.destination.address})` : "no destination";
  const fallbacks = d.fallbacks.length ? `fallbacks ${d.fallbacks.map((f) => f.endpoint).join(", ")}` : null;
  const pd = d.pd
    ? el("span", { class: "pd" }, d.pd.prefill ? `P/D: prefill on ${d.pd.prefill.endpoint}` : `P/D: ${d.pd.decision}`)
    : null;
  const error = d.error ? el("span", { class: "err" }, `${d.error.status} ${d.error.code}: ${d.error.message}`) : null;
  const response = d.response ? el("span", { class: "muted" }, `response ${d.response.status ?? "–"} in ${seconds(d.response.seconds)}`) : null;
  return el("div", { class: `decision ${d.outcome}`, "data-request-id": d.request_id, "data-seq": d.seq },
    el("div", { class: "head" },
      el("span", { class: "muted" }, time),
      el("span", { class: "dest" }, dest),
      pd, error,
      el("span", {}, d.model),
      el("span", { class: "muted" }, `${d.candidates.length} candidates, ${d.admission || "not admitted"}, scheduled in ${seconds(d.schedule_seconds)}`),
      fallbacks ? el("span", { class: "muted" }, fallbacks) : null,
      response,
      el("span", { class: "rid" }, d.request_id)),
    ...d.profiles.map(profileView));
}

function addDecision(d) {
  decisions.unshift(d);
  decisions.length = Math.min(decisions.length, MAX_DECISIONS);
  if (d.pd) pdCounts[d.pd.decision] = (pdCounts[d.pd.decision] || 0) + 1;
}

let pending = false;
function renderDecisions() {
  if (pending) return;
  pending = true;
  setTimeout(() => {
    pending = false;
    document.getElementById("decisions").replaceChildren(...decisions.map(decisionView));
    const pd = Object.entries(pdCounts).map(([k, v]) => `${k}: ${v}`).join(", ");
    document.getElementById("pd-summary").textContent = pd ? `P/D decisions since this page opened: ${pd}` : "";
  }, 50);
}

function connect() {
  const status = document.getElementById("status");
  const events = new EventSource("../api/events");
  events.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  events.onerror = () => { status.textContent = "reconnecting…"; status.className = "status connecting"; };
  events.addEventListener("endpoints", (event) => renderEndpoints(JSON.parse(event.data)));
  events.addEventListener("decision", (event) => { addDecision(JSON.parse(event.data)); renderDecisions(); });
}

connect();
