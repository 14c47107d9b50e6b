// compatret console: reads the gallery through the JSON API, with the key the user typed
// (kept in this tab's sessionStorage only). Text from the server is always set as text, never as HTML.
"use strict";

const KEY = "compatret.apiKey";
const SERVING_COLOR = "#2458d6";  // the accent: the serving model, in the bar and the lineage
const $ = (id) => document.getElementById(id);
const view = { gallery: null, running: false, timer: null, modeSet: false, polling: false, pollAgain: false, errorFromPoll: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);  // CSSOM: allowed by the page's policy, inline style="" is not
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function describe(status, data) {
  const detail = data && data.detail;
  if (status === 401) {
    return detail === "unknown API key" ? "The server does not know this key: check it and enter it again."
      : "This server needs an API key: enter it at the top of the page.";
  }
  if (status === 403) return "Your key may only read: this needs a write key.";
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
  }
  return `${typeof detail === "string" ? detail : "request failed"} (HTTP ${status})`;
}

async function api(method, path, body) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new Error("Cannot reach the server: is `compatret serve` still running?");
  }
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  if (!res.ok) throw new Error(describe(res.status, data));
  return data;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function attempt(fn) {
  try {
    await fn();
    return true;
  } catch (err) {
    showError(err.message);
    return false;
  }
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function renderGallery(g) {
  view.gallery = g;
  const stats = [["rows", g.rows.toLocaleString()], ["vectors", `${g.dim}-d ${g.metric} (${g.modality})`],
    ["serving model", g.serving], ["search", `${g.kernel}, index ${g.ann}`], ["table version", g.table_version],
    ["on disk", bytes(g.disk_bytes)]];
  $("stats").replaceChildren(...stats.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-stat": k }, v)]));
  $("lineage").replaceChildren(...g.lineage.flatMap((m, i) => [
    ...(i ? [el("li", { class: "arrow", title: "how this model's queries meet its parent's vectors" }, el("span", { class: "rule" }, m.rule), "→")] : []),
    el("li", { class: m.serving ? "model serving" : "model", "data-model": m.id, style: { borderLeftColor: barColor(m.id, g.serving) } },
      el("div", {}, el("strong", {}, m.id)),
      el("div", { class: "muted" }, `${m.dim}-d · ${m.rows ? `${m.rows.toLocaleString()} rows` : "no rows"}`),
      m.serving ? el("div", { class: "badge" }, "serving") : ""),
  ]));
  const select = $("query-model");
  const options = JSON.stringify([g.query_models, g.serving]);
  if (select.dataset.options !== options) {  // rebuilt only when the models change: an open list stays open
    const chosen = select.value;
    select.replaceChildren(...g.query_models.map((id) => el("option", { value: id }, id === g.serving ? `${id} (serving)` : id)));
    select.value = g.query_models.includes(chosen) ? chosen : g.serving;
    select.dataset.options = options;
  }
  if (!view.modeSet) {  // the first time the gallery is known: a query mode that suits it
    view.modeSet = true;
    const mode = g.modality === "text" ? "text" : g.modality === "image" ? "image" : "vector";
    document.querySelector(`input[name=mode][value=${mode}]`).checked = true;
    setMode();
  }
  for (const node of document.querySelectorAll(".writes")) node.hidden = !g.can_write;
  $("read-only-note").hidden = g.can_write;
}

// the bar is a progress bar: the serving model's rows in the accent colour, from the left; rows
// that still carry older vectors in greys, so a bar of old rows never reads as "done"
const OLDER = ["#98a2b3", "#c4cad4", "#d9dee8", "#b0b8c4"];

function barColor(id, serving) {
  if (id === serving) return SERVING_COLOR;
  const order = view.gallery ? view.gallery.lineage.map((m) => m.id) : [];
  const i = order.indexOf(id);
  return OLDER[(i < 0 ? order.length : i) % OLDER.length];
}

function renderBackfill(b) {
  const total = Object.values(b.rows_by_version).reduce((a, n) => a + n, 0);
  const entries = Object.entries(b.rows_by_version).sort(([a], [c]) => (c === b.serving) - (a === b.serving));
  $("bar").replaceChildren(...entries.map(([id, n]) => el("span", {
    title: `${id}: ${n.toLocaleString()} rows`, "data-version": id,
    style: { width: `${total ? (100 * n) / total : 0}%`, background: barColor(id, b.serving) },
  })));
  $("legend").replaceChildren(...entries.map(([id, n]) => el("li", {}, el("i", { style: { background: barColor(id, b.serving) } }),
    `${id}${id === b.serving ? " (serving)" : ""}: ${n.toLocaleString()}`)));
  $("backfill-summary").hidden = false;
  $("backfill-waiting").hidden = true;
  const done = b.rows_by_version[b.serving] || 0;
  const percent = total ? Math.floor((1000 * done) / total) / 10 : 0;
  $("backfill-percent").textContent = total ? `${percent}%` : "–";
  $("backfill-percent").dataset.percent = percent;
  const report = b.last_report;
  const state = b.running ? "backfill running…"
    : b.last_error ? `last backfill failed: ${b.last_error}`
    : report ? `last backfill: ${report.done.toLocaleString()} rows${report.stopped ? " (stopped)" : ""}, ${b.pending.toLocaleString()} pending`
    : `${b.pending.toLocaleString()} rows can be re-embedded`;
  $("backfill-state").textContent = state;
  $("backfill-start").disabled = b.running || b.pending === 0;
  $("backfill-stop").disabled = !b.running;
}

function renderHistory(entries) {
  const canWrite = view.gallery && view.gallery.can_write;
  $("history").tBodies[0].replaceChildren(...entries.map((e, i) => {
    const span = e.to_version && e.to_version !== e.version ? `${e.version}..${e.to_version}` : `${e.version}`;
    const last = e.to_version || e.version;
    const action = canWrite && i > 0
      ? el("button", { type: "button", class: "rollback", "data-version": last }, "Roll back here") : "";
    if (action) action.addEventListener("click", () => rollback(last, e.serving));
    return el("tr", {}, el("td", {}, span), el("td", {}, e.time.replace("T", " ").slice(0, 19)), el("td", {}, e.rows.toLocaleString()),
      el("td", {}, e.serving || ""), el("td", { class: "change" }, e.change), el("td", {}, action));
  }));
}

async function refresh() {
  const ok = await attempt(async () => {
    renderGallery(await api("GET", "/gallery"));
    renderBackfill(await api("GET", "/backfill"));
    renderHistory(await api("GET", "/history?limit=50"));
  });
  if (ok) showError("");
}

async function poll() {
  if (view.polling) {  // one poll at a time: a click during a poll asks for another right after it
    view.pollAgain = true;
    return;
  }
  view.polling = true;
  clearTimeout(view.timer);
  try {
    const status = await api("GET", "/backfill");
    const wasRunning = view.running;
    view.running = status.running;
    renderBackfill(status);
    // the gallery view is the search snapshot, which follows the table a moment later: read it every time
    renderGallery(await api("GET", "/gallery"));
    if (status.running || wasRunning) renderHistory(await api("GET", "/history?limit=50"));
    if (view.errorFromPoll) showError("");
    view.errorFromPoll = false;
  } catch (err) {
    showError(err.message);
    view.errorFromPoll = true;
  } finally {
    view.polling = false;
    view.timer = setTimeout(poll, view.running ? 700 : 4000);
    if (view.pollAgain) {
      view.pollAgain = false;
      poll();
    }
  }
}

async function rollback(version, serving) {
  if (!window.confirm(`Restore table version ${version}${serving ? ` (serving ${serving})` : ""}? It is written as a new version: nothing is lost.`)) return;
  if (await attempt(() => api("POST", "/rollback", { version }))) await refresh();
}

async function startBackfill(event) {
  event.preventDefault();
  const body = { batch_size: Number($("backfill-batch").value) || 64 };
  const percent = $("backfill-fraction").value;
  if (percent) body.fraction = Number(percent) / 100;
  if (await attempt(() => api("POST", "/backfill", body))) {
    view.running = true;
    showError("");
    poll();
  }
}

async function stopBackfill() {
  if (await attempt(() => api("POST", "/backfill/stop", {}))) poll();
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error("could not read the image file"));
    reader.readAsDataURL(file);
  });
}

async function queryBody() {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const body = { k: Number($("k").value) || 10, model: $("query-model").value, payload: true };
  const text = $("query").value.trim();
  if (mode === "image") {
    const file = $("image").files[0];
    if (!file) throw new Error("Choose an image file to search with.");
    body.images_base64 = [await readImage(file)];
  } else if (mode === "vector") {
    let vector;
    try { vector = JSON.parse(text); } catch { vector = null; }
    if (!Array.isArray(vector) || !vector.length || !vector.every((x) => typeof x === "number")) {
      throw new Error("A vector query is a JSON list of numbers, e.g. [0.1, -0.3, 0.7].");
    }
    body.vectors = [vector];
  } else {
    if (!text) throw new Error("Type something to search for.");
    body.texts = [text];
  }
  return body;
}

function renderHits(result, seconds) {
  const serving = view.gallery ? view.gallery.serving : "";
  $("search-summary").textContent = `${result.ids.length} hits in ${seconds.toFixed(2)} s (table version ${result.table_version})`;
  $("hits").replaceChildren(...result.ids.map((id, i) => {
    const p = (result.payloads || [])[i] || {};
    const snippet = (p.text || "").length > 240 ? `${p.text.slice(0, 240)}…` : p.text || "";
    const meta = p.metadata ? JSON.stringify(p.metadata) : p.image_bytes ? `image, ${bytes(p.image_bytes)}` : "";
    return el("li", { "data-id": id },
      el("div", { class: "head" }, el("span", { class: "title" }, p.title || id), el("span", { class: "score" }, result.scores[i].toFixed(4)),
        el("span", { class: p.model_version === serving ? "version" : "version old", title: "model whose vector this row holds" },
          p.model_version || "?"), el("span", { class: "muted" }, p.title ? `id ${id}` : "")),
      snippet ? el("div", { class: "text" }, snippet) : "", meta ? el("div", { class: "muted" }, meta) : "");
  }));
}

async function search(event) {
  event.preventDefault();
  const started = performance.now();
  if (await attempt(async () => {
    const data = await api("POST", "/query", await queryBody());
    renderHits(data.results[0], (performance.now() - started) / 1000);
  })) showError("");
}

function setMode() {
  const mode = document.querySelector("input[name=mode]:checked").value;
  $("image").hidden = mode !== "image";
  $("query").hidden = mode === "image";
}

function start() {
  $("key").value = sessionStorage.getItem(KEY) || "";
  $("key-state").textContent = sessionStorage.getItem(KEY) ? "key set for this tab" : "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    $("key-state").textContent = key ? "key set for this tab" : "";
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    window.location.reload();  // nothing the old key could see stays on screen
  });
  $("backfill-form").addEventListener("submit", startBackfill);
  $("backfill-stop").addEventListener("click", stopBackfill);
  $("search-form").addEventListener("submit", search);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", setMode);
  refresh().then(poll);
}

document.addEventListener("DOMContentLoaded", start);
