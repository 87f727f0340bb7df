// aiflow's live dashboard: reads the daemon's server-sent events (/v1/events) with fetch, so the API
// token travels in the Authorization header (never in a URL), and draws everything with plain SVG.
"use strict";

const TOKEN_KEY = "aiflow.apiToken";
const SVG_NS = "http://www.w3.org/2000/svg";
const LATENCY_WINDOW_S = 600;          // the latency chart shows the last ten minutes
const MAX_REQUESTS = 500;
const MAX_LIVE_POINTS = 2000;
const TIERS = ["device", "edge", "cloud"];
const HISTORY_REFRESH_MS = 5000;

const S = {
  state: null, requests: [], live: {}, linkHistory: null, linkError: null, chosenLink: null,
  shownVersion: null, versionShownAt: {}, connected: false, linkFetchedAt: 0,
};
window.aiflowDashboard = S;            // for tests and the curious: the state the page draws

// -- formatting -------------------------------------------------------------------------------------
function fmtBps(b) {
  if (b == null) return "unknown";
  if (b >= 1e9) return (b / 1e9).toFixed(2) + " Gbit/s";
  if (b >= 1e6) return (b / 1e6).toFixed(b >= 1e8 ? 0 : 1) + " Mbit/s";
  if (b >= 1e3) return (b / 1e3).toFixed(1) + " kbit/s";
  return b.toFixed(0) + " bit/s";
}
function fmtBytes(n) {
  if (n == null) return "unknown";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
  return n.toFixed(0) + " B";
}
function fmtS(s) {
  if (s == null) return "unknown";
  if (s >= 10) return s.toFixed(1) + " s";
  const ms = s * 1000;
  return (ms < 10 ? ms.toFixed(2) : ms.toFixed(1)) + " ms";
}
function fmtDuration(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function fmtTime(t) {
  return new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});
}
function median(values) {
  if (!values.length) return null;
  const v = [...values].sort((a, b) => a - b);
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// -- small DOM and SVG helpers ----------------------------------------------------------------------
const $ = (sel) => document.querySelector(sel);
function el(tag, attrs = {}, text = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}
function sv(tag, attrs = {}, parent = null, text = null) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text != null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function newSvg(host, width, height, label) {
  const svg = sv("svg", {viewBox: `0 0 ${width} ${height}`, width, height, role: "img"});
  const id = host.id + "-title";
  sv("title", {id}, svg, label);
  svg.setAttribute("aria-labelledby", id);
  host.replaceChildren(svg);
  return svg;
}
function widthOf(host) { return Math.max(280, Math.floor(host.clientWidth || 600)); }
function cell(row, label, text, cls) {
  const td = el("td", {"data-label": label}, text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function ticks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(v);
  return out;
}

// -- the token --------------------------------------------------------------------------------------
function token() { return sessionStorage.getItem(TOKEN_KEY); }
function authHeaders() { const t = token(); return t ? {Authorization: "Bearer " + t} : {}; }
function askToken(why) {
  $("#main").hidden = true;
  $("#token-why").textContent = why;
  $("#token-form").hidden = false;
  setConnection("connecting", "Waiting for the API token");
  $("#token").focus();
}
function onTokenSubmit(ev) {
  ev.preventDefault();
  const value = $("#token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("#token").value = "";
  $("#token-form").hidden = true;
  connect();
}
// 401/403 on a read: forget a token that was refused, ask once more
function refused(status) {
  const had = token();
  sessionStorage.removeItem(TOKEN_KEY);
  askToken(status === 403 || had ? "The daemon refused that token. Enter the token it was started with."
                                 : "Reads on this daemon need its API token.");
}
async function getJSON(path) {
  const res = await fetch(path, {headers: authHeaders(), cache: "no-store"});
  if (res.status === 401 || res.status === 403) { refused(res.status); throw new Error("token"); }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || `HTTP ${res.status}`);
  return body;
}

// -- the event stream -------------------------------------------------------------------------------
function setConnection(state, text) {
  const c = $("#connection");
  c.dataset.state = state;
  c.textContent = text;
}
let retryTimer = null;
function retry() {
  S.connected = false;
  setConnection("reconnecting", "Connection lost: reconnecting…");
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, 1000);
}
async function connect() {
  let res;
  try {
    res = await fetch("/v1/events", {headers: authHeaders(), cache: "no-store"});
  } catch (e) { retry(); return; }
  if (res.status === 401 || res.status === 403) { refused(res.status); return; }
  if (!res.ok || !res.body) { retry(); return; }
  S.connected = true;
  setConnection("live", "Live: updates as the daemon changes");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (e) { /* the daemon went away: reconnect below */ }
  retry();
}
function handleEvent(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trim());
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (kind === "state") onState(payload);
  else if (kind === "request") onRequest(payload);
}

function onState(st) {
  const first = S.state === null;
  S.state = st;
  if (st.requests) S.requests = st.requests.slice(-MAX_REQUESTS);
  for (const l of st.links) {
    if (l.bandwidth_bps == null) continue;
    const pts = (S.live[l.key] = S.live[l.key] || []);
    if (!pts.length || pts[pts.length - 1].at < st.now) pts.push({at: st.now, bw: l.bandwidth_bps, lat: l.latency_s});
    if (pts.length > MAX_LIVE_POINTS) pts.shift();
  }
  $("#token-form").hidden = true;
  $("#main").hidden = false;
  const version = st.plan ? st.plan.version : null;
  if (version !== S.shownVersion) {
    S.versionShownAt[version] = Date.now() / 1000;
    if (S.shownVersion !== null && st.plan) {
      $("#announce").textContent = `Plan v${version} is in force: ${placementWords(st.plan)}.`;
    }
    S.shownVersion = version;
  }
  renderAll();
  if (first) chooseLink(defaultLink());
  else if (Date.now() - S.linkFetchedAt > HISTORY_REFRESH_MS) loadLinkHistory();   // new windows were stored
}
function onRequest(point) {
  S.requests.push(point);
  if (S.requests.length > MAX_REQUESTS) S.requests.shift();
  renderLatency();
}

// -- rendering --------------------------------------------------------------------------------------
function placementWords(plan) {
  return Object.entries(plan.nodes).map(([n, v]) => `${n} runs unit${v.units.length > 1 ? "s" : ""} ${v.spans}`).join("; ");
}
function unitsText(plan, node) {
  const v = plan && plan.nodes[node];
  if (!v) return "no units";
  return `units ${v.spans} (${v.units.length})`;
}
function renderAll() {
  const st = S.state;
  $("#model").textContent = st.model;
  const p = st.plan;
  $("#plan-line").textContent = p
    ? `Plan v${p.version}, in force since ${fmtTime(p.applied_at)}: ${placementWords(p)}. Predicted latency ${fmtS(p.predicted_latency_s)}.`
      + (st.emulated ? ` Links and loads are emulated (time dilation K = ${st.dilation.toFixed(2)}).` : "")
    : "No plan is in force yet.";
  renderTopology();
  renderNodes();
  renderLinks();
  renderLatency();
  renderDecisions();
  renderLinkSelect();
  renderLinkHistory();
}

function tiersOf(nodes) {
  const groups = new Map();
  for (const t of TIERS) groups.set(t, []);
  for (const n of nodes) {
    const t = TIERS.includes(n.tier) ? n.tier : "other";
    if (!groups.has(t)) groups.set(t, []);
    groups.get(t).push(n);
  }
  return [...groups.entries()].filter(([, ns]) => ns.length);
}

function renderTopology() {
  const st = S.state, host = $("#topology"), W = widthOf(host), narrow = W < 600;
  const tiers = tiersOf(st.nodes), plan = st.plan;
  const most = Math.max(...tiers.map(([, ns]) => ns.length));
  const boxW = narrow ? Math.min(170, (W - 16) / most - 12) : Math.min(180, (W / tiers.length) * 0.5);
  const boxH = 84, pos = {};
  let H;
  if (narrow) {                        // tiers as rows, top to bottom, room for link labels between them
    const rowH = boxH + 96;
    tiers.forEach(([, ns], i) => ns.forEach((n, j) => {
      pos[n.name] = {x: (W / (ns.length + 1)) * (j + 1), y: 26 + i * rowH + boxH / 2};
    }));
    H = 26 + tiers.length * rowH - 80;
  } else {                             // tiers as columns, left to right
    const colW = W / tiers.length;
    tiers.forEach(([, ns], i) => ns.forEach((n, j) => {
      pos[n.name] = {x: colW * (i + 0.5), y: 34 + j * (boxH + 60) + boxH / 2};
    }));
    H = 34 + most * (boxH + 60) - 50;
  }
  const summary = st.nodes.map((n) => `${n.name} (${n.tier || "no tier"}, ${n.state}): ${unitsText(plan, n.name)}`).join("; ");
  const svg = newSvg(host, W, H, `Topology: ${summary}`);
  tiers.forEach(([tier, ns], i) => {
    const p = pos[ns[0].name];
    if (narrow) sv("text", {class: "tier", x: 4, y: p.y - boxH / 2 - 8}, svg, tier);
    else sv("text", {class: "tier", x: p.x, y: 16, "text-anchor": "middle"}, svg, tier);
  });
  for (const l of st.links) {
    const a = pos[l.a], b = pos[l.b];
    if (!a || !b) continue;
    const flow = plan && plan.links[l.key];
    const g = sv("g", {class: "link" + (flow ? " carries" : ""), "data-link": l.key}, svg);
    sv("line", {x1: a.x, y1: a.y, x2: b.x, y2: b.y}, g);
    const lines = [`${fmtBps(l.bandwidth_bps)} · ${fmtS(l.latency_s)}`,
                   flow ? `${fmtBytes(flow.bytes)} per request` : "no plan traffic"];
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    const w = Math.max(...lines.map((s) => s.length)) * 7 + 10;
    sv("rect", {class: "label-bg", x: mx - w / 2, y: my - 17, width: w, height: 34, rx: 4}, g);
    sv("text", {x: mx, y: my - 3, "text-anchor": "middle"}, g, lines[0]);
    sv("text", {class: "traffic", x: mx, y: my + 12, "text-anchor": "middle"}, g, lines[1]);
  }
  for (const n of st.nodes) {
    const p = pos[n.name], inPlan = !!(plan && plan.nodes[n.name]);
    const g = sv("g", {class: `node ${n.state}${inPlan ? " in-plan" : ""}`, "data-node": n.name}, svg);
    sv("rect", {x: p.x - boxW / 2, y: p.y - boxH / 2, width: boxW, height: boxH, rx: 6}, g);
    const role = n.source ? (n.sink ? " · source, sink" : " · source") : (n.sink ? " · sink" : "");
    const x = p.x - boxW / 2 + 8;
    sv("text", {class: "name", x, y: p.y - boxH / 2 + 18}, g, n.name + role);
    sv("text", {class: "detail", x, y: p.y - boxH / 2 + 36}, g, n.hardware);
    sv("text", {class: "detail", x, y: p.y - boxH / 2 + 53},
       g, n.state === "up" ? `up · slowdown ${Number(n.slowdown).toFixed(1)}` : n.state.toUpperCase());
    sv("text", {class: "units", x, y: p.y - boxH / 2 + 72}, g, unitsText(plan, n.name));
  }
}

function renderNodes() {
  const st = S.state, body = $("#nodes-table tbody"), rows = [];
  for (const n of st.nodes) {
    const tr = el("tr", {"data-node": n.name});
    const v = st.plan && st.plan.nodes[n.name];
    cell(tr, "Node", n.name + (n.source ? " (source)" : ""));
    cell(tr, "Tier", n.tier || "none");
    cell(tr, "Hardware", n.hardware);
    cell(tr, "State", n.state === "up" ? `up, slowdown ${Number(n.slowdown).toFixed(2)}` : n.state, n.state === "down" ? "state-down" : "");
    cell(tr, "Units in the plan", v ? `${v.spans} (${v.units.length} unit${v.units.length > 1 ? "s" : ""}: ${v.unit_names.join(", ")})` : "none", "units");
    cell(tr, "Compute per request", v ? fmtS(v.compute_s) : "none", "num");
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function renderLinks() {
  // rows are updated in place while the links stay the same, so a focused "Show history" button keeps focus
  const st = S.state, body = $("#links-table tbody");
  const same = [...body.rows].map((r) => r.dataset.link).join("|") === st.links.map((l) => l.key).join("|");
  if (!same) {
    body.replaceChildren(...st.links.map((l) => {
      const tr = el("tr", {"data-link": l.key});
      for (const label of ["Link", "Bandwidth", "Latency", "Estimate", "Plan traffic"]) cell(tr, label, "");
      tr.cells[1].className = tr.cells[2].className = "num";
      tr.cells[4].className = "traffic";
      const b = el("button", {type: "button", "aria-controls": "link-section",
                              "aria-label": `Show the history of link ${l.a} – ${l.b}`}, "Show history");
      b.addEventListener("click", () => { chooseLink(l.key); $("#link-select").focus(); });
      cell(tr, "History", "").appendChild(b);
      return tr;
    }));
  }
  st.links.forEach((l, i) => {
    const c = body.rows[i].cells, flow = st.plan && st.plan.links[l.key];
    const dirs = flow ? Object.entries(flow.directions).map(([d, b]) => `${d.replace("->", " → ")} ${fmtBytes(b)}`).join(", ") : "";
    c[0].textContent = `${l.a} – ${l.b}`;
    c[1].textContent = fmtBps(l.bandwidth_bps) + (l.played ? ` (emulated: ${fmtBps(l.played.bandwidth_bps)})` : "");
    c[2].textContent = fmtS(l.latency_s) + (l.played ? ` (emulated: ${fmtS(l.played.latency_s)})` : "");
    c[3].textContent = `${l.method || "none"}, ${l.samples} sample${l.samples === 1 ? "" : "s"}`;
    c[4].textContent = flow ? `${fmtBytes(flow.bytes)} in ${flow.messages} message${flow.messages > 1 ? "s" : ""} (${dirs}); ${fmtS(flow.transfer_s)}` : "none";
  });
}

function renderLatency() {
  if (!S.state) return;
  const host = $("#latency-chart"), W = widthOf(host), H = W < 600 ? 200 : 240;
  const m = {l: 54, r: 14, t: 22, b: 28};
  const last = S.requests.length ? S.requests[S.requests.length - 1].at : S.state.now;
  // from the first request or switch in the last ten minutes (at least a minute shown) to now
  const t1 = Math.max(last, S.state.now);
  const first = Math.min(...[...S.requests, ...S.state.switches].map((p) => p.at).filter((t) => t >= t1 - LATENCY_WINDOW_S), t1);
  const t0 = Math.min(first - 0.05 * (t1 - first), t1 - 60);
  const pts = S.requests.filter((p) => p.at >= t0);
  const switches = S.state.switches.filter((s) => s.at >= t0 && s.at <= t1 + 1);
  const cur = pts.filter((p) => S.state.plan && p.version === S.state.plan.version);
  const med = median(cur.map((p) => p.latency_s));
  $("#latency-summary").textContent = pts.length
    ? `${pts.length} request${pts.length > 1 ? "s" : ""} in the last ten minutes. Latest: ${fmtS(pts[pts.length - 1].latency_s)} measured, `
      + `${fmtS(pts[pts.length - 1].predicted_s)} predicted, on plan v${pts[pts.length - 1].version}.`
      + (med != null ? ` Median on the plan in force: ${fmtS(med)}.` : "")
      + (switches.length ? ` Plan switches: ${switches.map((s) => `v${s.version} at ${fmtTime(s.at)}`).join(", ")}.` : "")
    : "No requests in the last ten minutes.";
  const svg = newSvg(host, W, H, "Request latency over time: " + $("#latency-summary").textContent);
  const ymax = Math.max(1e-3, ...pts.map((p) => Math.max(p.latency_s, p.predicted_s || 0))) * 1.15;
  const X = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - (v / ymax) * (H - m.t - m.b);
  const axis = sv("g", {class: "axis"}, svg);
  for (const v of ticks(0, ymax, 4)) {
    sv("line", {x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v)}, axis);
    sv("text", {x: m.l - 6, y: Y(v) + 4, "text-anchor": "end"}, axis, fmtS(v));
  }
  for (let k = 0; k <= 3; k++) {
    const t = t0 + (k / 3) * (t1 - t0);
    sv("text", {x: X(t), y: H - 8, "text-anchor": k === 0 ? "start" : k === 3 ? "end" : "middle"}, axis, fmtTime(t));
  }
  for (const s of switches) {
    const g = sv("g", {class: "switch", "data-version": s.version}, svg);
    sv("line", {x1: X(s.at), x2: X(s.at), y1: m.t - 4, y2: H - m.b}, g);
    sv("text", {x: X(s.at) + 3, y: m.t - 8}, g, `v${s.version}`);
  }
  if (!pts.length) {
    sv("text", {class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle"}, svg, "No requests yet");
  } else {
    const path = (key) => pts.map((p, i) => `${i ? "L" : "M"}${X(p.at).toFixed(1)},${Y(p[key]).toFixed(1)}`).join(" ");
    sv("path", {class: "predicted", d: path("predicted_s")}, svg);
    sv("path", {class: "measured-line", d: path("latency_s")}, svg);
    for (const p of pts) sv("circle", {class: "measured", cx: X(p.at), cy: Y(p.latency_s), r: 3}, svg);
  }
  const rows = S.requests.slice(-15).reverse().map((p) => {
    const tr = el("tr");
    cell(tr, "Time", fmtTime(p.at));
    cell(tr, "Plan", `v${p.version}`);
    cell(tr, "Measured", fmtS(p.latency_s), "num");
    cell(tr, "Predicted", fmtS(p.predicted_s), "num");
    return tr;
  });
  $("#requests-table tbody").replaceChildren(...rows);
}

const OUTCOMES = {
  switched: (d) => `switched to v${d.switched_to}`, switching: () => "switching", failed: () => "switch failed; plan kept",
  kept: () => "kept the plan in force",
};
function renderDecisions() {
  const rows = [...S.state.decisions].reverse().map((d) => {
    const tr = el("tr", {"data-outcome": d.outcome});
    cell(tr, "Time", fmtTime(d.at));
    cell(tr, "Trigger", d.trigger);
    cell(tr, "Outcome", (OUTCOMES[d.outcome] || (() => d.outcome))(d), "outcome-" + d.outcome);
    const times = d.current_s != null ? ` (in force ${fmtS(d.current_s)}, candidate ${fmtS(d.candidate_s)})` : "";
    cell(tr, "Why", d.reason + times);
    return tr;
  });
  $("#decisions-table tbody").replaceChildren(...rows);
}

// -- the history of a link --------------------------------------------------------------------------
function defaultLink() {
  const st = S.state;
  const carrying = st.links.find((l) => st.plan && st.plan.links[l.key]);
  return (carrying || st.links[0] || {}).key || null;
}
function renderLinkSelect() {
  const sel = $("#link-select"), keys = S.state.links.map((l) => l.key);
  const have = [...sel.options].map((o) => o.value);
  if (have.join("|") !== keys.join("|")) {
    sel.replaceChildren(...S.state.links.map((l) => el("option", {value: l.key}, `${l.a} – ${l.b}`)));
  }
  if (S.chosenLink) sel.value = S.chosenLink;
}
async function chooseLink(key) {
  if (!key) return;
  S.chosenLink = key;
  $("#link-select").value = key;
  await loadLinkHistory();
}
async function loadLinkHistory() {
  const key = S.chosenLink, since = Number($("#link-range").value);
  if (!key) return;
  S.linkFetchedAt = Date.now();
  try {
    const doc = await getJSON(`/v1/history/links?link=${encodeURIComponent(key)}&since_s=${since}`);
    if (key !== S.chosenLink) return;
    S.linkHistory = doc;
    S.linkError = null;
  } catch (e) {
    if (key !== S.chosenLink) return;
    S.linkHistory = null;
    S.linkError = e.message;
  }
  renderLinkHistory();
}
function renderLinkHistory() {
  const key = S.chosenLink, st = S.state;
  if (!key || !st) return;
  const since = Number($("#link-range").value), t1 = st.now;
  const link = st.links.find((l) => l.key === key);
  const hist = S.linkHistory && S.linkHistory.link === key
    ? S.linkHistory.rows.filter((r) => r.window_start >= t1 - since - S.linkHistory.window_s) : [];
  // the period chosen, or less when the data starts later (a young daemon), at least a minute
  const earliest = Math.min(t1, ...hist.map((r) => r.window_start), ...(S.live[key] || []).map((p) => p.at));
  const t0 = Math.min(t1 - 60, Math.max(t1 - since, earliest - 0.05 * (t1 - earliest)));
  const live = (S.live[key] || []).filter((p) => p.at >= t0);
  const bws = hist.map((r) => r.bandwidth_p50_bps).filter((v) => v != null);
  let text = link ? `${link.a} – ${link.b}: now ${fmtBps(link.bandwidth_bps)} and ${fmtS(link.latency_s)} `
    + `(${link.method || "no"} estimate from ${link.samples} sample${link.samples === 1 ? "" : "s"}).` : "";
  if (bws.length) {
    const lo = Math.min(...bws), hi = Math.max(...bws);
    text += ` Stored history: ${hist.length} window${hist.length > 1 ? "s" : ""} of ${fmtDuration(S.linkHistory.window_s)};`
      + (lo === hi ? ` median bandwidth ${fmtBps(lo)}.` : ` median bandwidth between ${fmtBps(lo)} and ${fmtBps(hi)}.`);
  } else if (S.linkError) {
    text += ` Stored history: ${S.linkError}; showing the estimates since this page opened.`;
  } else {
    text += " No stored history in this period yet.";
  }
  $("#link-summary").textContent = text;
  const host = $("#link-chart"), W = widthOf(host), h = W < 600 ? 150 : 170;
  const svg = newSvg(host, W, 2 * h + 16, `History of link ${key}: ${text}`);
  const panel = (y0, label, rows, lo, mid, hi, liveKey, fmt) => {
    const m = {l: 78, r: 14, t: 18, b: 24};
    const vals = [...rows.flatMap((r) => [r[lo], r[mid], r[hi]]), ...live.map((p) => p[liveKey])].filter((v) => v != null);
    const ymax = Math.max(...vals, 1e-9) * 1.15;
    const X = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
    const Y = (v) => y0 + h - m.b - (v / ymax) * (h - m.t - m.b);
    const g = sv("g", {class: "axis"}, svg);
    sv("text", {x: m.l, y: y0 + 12}, g, label);
    for (const v of ticks(0, ymax, 3)) {
      sv("line", {x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v)}, g);
      sv("text", {x: m.l - 6, y: Y(v) + 4, "text-anchor": "end"}, g, fmt(v));
    }
    for (let k = 0; k <= 2; k++) {
      const t = t0 + (k / 2) * (t1 - t0);
      sv("text", {x: X(t), y: y0 + h - 6, "text-anchor": k === 0 ? "start" : k === 2 ? "end" : "middle"}, g, fmtTime(t));
    }
    const ok = rows.filter((r) => r[mid] != null);
    const half = S.linkHistory ? S.linkHistory.window_s / 2 : 0;
    if (ok.length) {
      const top = ok.map((r) => `${X(r.window_start + half).toFixed(1)},${Y(r[hi] ?? r[mid]).toFixed(1)}`);
      const bottom = ok.map((r) => `${X(r.window_start + half).toFixed(1)},${Y(r[lo] ?? r[mid]).toFixed(1)}`).reverse();
      sv("path", {class: "band", d: `M${top.join(" L")} L${bottom.join(" L")} Z`}, svg);
      sv("path", {class: "median", d: "M" + ok.map((r) => `${X(r.window_start + half).toFixed(1)},${Y(r[mid]).toFixed(1)}`).join(" L")}, svg);
    }
    for (const p of live) if (p[liveKey] != null) sv("circle", {class: "live", cx: X(p.at), cy: Y(p[liveKey]), r: 2.5}, svg);
    if (!ok.length && !live.length) sv("text", {class: "empty", x: W / 2, y: y0 + h / 2, "text-anchor": "middle"}, svg, "No measurements in this period");
  };
  panel(0, "Bandwidth", hist, "bandwidth_p10_bps", "bandwidth_p50_bps", "bandwidth_p90_bps", "bw", fmtBps);
  panel(h + 16, "Latency", hist, "latency_p50_s", "latency_p50_s", "latency_p90_s", "lat", fmtS);
}

// -- start ------------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", onTokenSubmit);
  $("#link-select").addEventListener("change", (e) => chooseLink(e.target.value));
  $("#link-range").addEventListener("change", () => loadLinkHistory());
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (S.state) renderAll(); }, 150);
  });
  connect();
});
