// The status page: polls GET /ui/state and renders it; actions go through the management API.
// Plain DOM, no framework and no build step. Data is only ever written with textContent (never innerHTML).

const POLL_MS = 1500;
const STATE_TIMEOUT_MS = 5000;
const ACTION_TIMEOUT_MS = 120000; // a set-default redeploys the model's routes
const CSRF_HEADER = "x-modelpool-csrf";
const FINAL_BATCH_STATES = new Set(["complete", "completed", "done", "failed", "cancelled", "canceled"]);

let csrfToken = "";
let timer = 0;
let scaling = null; // {name, version} while the scale dialog is open

const $ = (id) => document.getElementById(id);

/** An element: h("td", {class: "num", testid: "rps"}, "1.5"). Children are nodes or text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "testid") el.dataset.testid = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const list = (value) => (Array.isArray(value) ? value : []);
const text = (value) => (value == null || value === "" ? "—" : String(value));
const slug = (value) => String(value ?? "").toLowerCase().replace(/[^a-z0-9]+/g, "-");

function number(value, digits = 1) {
  const n = Number(value);
  return value == null || value === "" || !Number.isFinite(n) ? "—" : n.toFixed(digits);
}

function clock(unixSeconds) {
  const n = Number(unixSeconds);
  if (unixSeconds == null || !Number.isFinite(n)) return "—";
  const d = new Date(n * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((part) => String(part).padStart(2, "0")).join(":");
}

function pill(value, testid = "status") {
  return h("span", { class: `pill state-${slug(value)}`, testid }, text(value));
}

// ------------------------------------------------------------------ rendering, keyed by row
const signatures = new WeakMap();

/** Show one element per item (or ``empty()`` for none); an element whose item did not change is kept, so a
 * refresh does not replace the button under the pointer (so an item should hold only what its element shows). */
function patch(container, items, keyOf, render, empty) {
  const known = new Map([...container.children].map((el) => [el.dataset.key, el]));
  const keep = (key, signature, make) => {
    const old = known.get(key);
    if (old && signatures.get(old) === signature) return old;
    const el = make();
    el.dataset.key = key;
    signatures.set(el, signature);
    return el;
  };
  const rows = items.length
    ? items.map((item) => keep(String(keyOf(item)), JSON.stringify(item), () => render(item)))
    : [keep("", "", empty)];
  const same = rows.length === container.children.length && rows.every((el, i) => container.children[i] === el);
  if (!same) container.replaceChildren(...rows);
}

const emptyRow = (columns, words) => () => h("tr", { class: "empty" }, h("td", { colspan: columns }, words));

function render(state) {
  csrfToken = state.csrfToken || csrfToken;
  const models = list(state.models);
  const versions = models.flatMap((model) => list(model.versions).map((version) => ({
    name: model.name, defaultVersion: model.defaultVersion, ...version,
    replicas: list(version.replicas)
      .map(({ replicaId, nodeId, nodeIp, state }) => ({ replicaId, nodeId, nodeIp, state })), // not lastReport
  })));
  const missing = list(state.unavailable);
  $("unavailable").hidden = !missing.length;
  $("unavailable").textContent = missing.length ? `Could not read ${missing.join(", ")} just now; shown empty.` : "";

  patch($("versions"), versions, (v) => `${v.name}/${v.version}`, versionRow, emptyRow(11, "No models registered."));
  patch($("nodes"), nodesWithReplicas(state.nodes, versions), (n) => n.nodeId, nodeCard,
    () => h("p", { class: "muted" }, "No nodes reported."));
  patch($("batches"), list(state.batches), (b) => b.executionId, batchRow, emptyRow(7, "No batch jobs."));
  patch($("pools"), list(state.pools), (p) => `${p.name}/${p.version}`, poolRow, emptyRow(5, "No pools."));
  patch($("graphs"), list(state.graphs), (g) => g.name, graphRow, emptyRow(6, "No graphs."));
  patch($("errors"), list(state.errors), (e) => e.requestId ?? `${e.time}-${e.message}`, errorRow,
    emptyRow(6, "No recent errors."));
}

function isDefault(v) {
  return v.isDefault ?? (v.defaultVersion != null && String(v.defaultVersion) === String(v.version));
}

function versionRow(v) {
  const stats = v.stats || {};
  const label = `${v.name} version ${v.version}`;
  const replicas = list(v.replicas);
  const byState = {};
  for (const r of replicas) byState[r.state ?? "UNKNOWN"] = (byState[r.state ?? "UNKNOWN"] || 0) + 1;
  return h("tr", { testid: `version-${v.name}-${v.version}` },
    h("th", { scope: "row" }, text(v.name)),
    h("td", {}, text(v.version), " ",
      isDefault(v) ? h("span", { class: "badge", testid: "default" }, "default") : null),
    h("td", { testid: "pool" }, text(v.pool)),
    h("td", { testid: "workers" }, `${text(v.minWorkers)}–${text(v.maxWorkers)}`),
    h("td", {}, pill(v.status)),
    h("td", { testid: "replicas" },
      h("span", { class: "muted", testid: "replica-summary" },
        replicas.length ? Object.entries(byState).map(([s, n]) => `${n} ${s}`).join(", ") : "none"),
      " ",
      replicas.map((r) => h("span", {
        class: `dot state-${slug(r.state)}`, testid: `replica-${r.replicaId}`,
        title: `${r.replicaId ?? "replica"} on ${r.nodeIp ?? r.nodeId ?? "?"}: ${r.state ?? "?"}`,
      }))),
    statCells(stats),
    h("td", { class: "num", testid: "errors-per-second" }, number(stats.errorsPerSecond, 2)),
    h("td", {}, h("div", { class: "actions" },
      h("button", {
        type: "button", testid: "scale", "aria-label": `Scale ${label}`, onclick: () => openScale(v),
      }, "Scale…"),
      isDefault(v) ? null : h("button", {
        type: "button", class: "quiet", testid: "set-default", "aria-label": `Make ${label} the default`,
        onclick: () => setDefault(v),
      }, "Make default"))));
}

/** req/s, p50 and p99 of the last minute (``windowS``: shorter when traffic began less than a minute ago). */
function statCells(stats = {}) {
  const over = stats?.windowS != null ? `over the last ${number(stats.windowS, 0)} s` : null;
  return [
    h("td", { class: "num", testid: "rps", title: over }, number(stats?.requestsPerSecond)),
    h("td", { class: "num", testid: "p50", title: over }, number(stats?.p50Ms)),
    h("td", { class: "num", testid: "p99", title: over }, number(stats?.p99Ms)),
  ];
}

/** Nodes as reported, each with the replicas the versions place on it (a node seen only in a replica is added). */
function nodesWithReplicas(nodes, versions) {
  const byId = new Map(list(nodes).map((n) => [String(n.nodeId), { ...n, placed: [] }]));
  for (const v of versions) {
    for (const r of list(v.replicas)) {
      const id = String(r.nodeId ?? r.nodeIp ?? "unknown");
      if (!byId.has(id)) byId.set(id, { nodeId: id, nodeIp: r.nodeIp, alive: null, placed: [] });
      byId.get(id).placed.push({ model: v.name, version: v.version, replicaId: r.replicaId, state: r.state });
    }
  }
  return [...byId.values()];
}

function nodeCard(n) {
  const alive = n.alive == null ? null : n.alive ? "alive" : "dead";
  return h("article", { class: "card", testid: `node-${n.nodeId}` },
    h("header", {}, h("strong", {}, text(n.nodeIp)), " ", alive ? pill(alive, "node-state") : null,
      n.isHead ? h("span", { class: "badge" }, "head") : null,
      h("small", { class: "muted", title: n.nodeId }, ` ${String(n.nodeId).slice(0, 12)}`)),
    n.placed.length
      ? h("ul", {}, n.placed.map((r) => h("li", { testid: "node-replica", title: r.replicaId ?? "" },
        h("span", { class: `dot state-${slug(r.state)}` }), `${r.model} v${r.version} `,
        pill(r.state, "replica-state"))))
      : h("p", { class: "muted" }, "No model replicas."));
}

function progressOf(b) {
  if (b.progress != null && Number.isFinite(Number(b.progress))) return Math.min(1, Math.max(0, Number(b.progress)));
  const total = Number(b.rowsTotal), done = Number(b.rowsDone);
  return total > 0 && Number.isFinite(done) ? Math.min(1, done / total) : null;
}

/** The bar's filled part; its width set through the CSSOM, which a Content-Security-Policy without
 * 'unsafe-inline' styles still allows (a style="" attribute it would not). */
function fill(percent) {
  const part = h("span");
  part.style.width = `${percent}%`;
  return part;
}

function batchRow(b) {
  const id = String(b.executionId ?? "");
  const fraction = progressOf(b);
  const percent = fraction == null ? null : Math.round(fraction * 100);
  const rows = b.rowsTotal != null ? `${text(b.rowsDone)} / ${b.rowsTotal}` : text(b.rowsDone);
  const final = FINAL_BATCH_STATES.has(String(b.state ?? "").toLowerCase());
  return h("tr", { testid: `batch-${id}` },
    h("td", { title: id }, h("code", {}, id.slice(0, 8))),
    h("td", {}, `${text(b.model)}${b.version != null ? ` v${b.version}` : ""}`),
    h("td", {}, pill(b.state, "state")),
    h("td", {},
      h("div", {
        class: "bar", role: "progressbar", testid: "progress", "aria-label": `Progress of batch job ${id}`,
        "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent,
        "aria-valuetext": percent == null ? "unknown" : `${percent}%`,
      }, fill(percent ?? 0)),
      h("span", { class: "percent", testid: "percent" }, percent == null ? "—" : `${percent}%`)),
    h("td", { class: "num", testid: "rows" }, rows),
    h("td", {}, clock(b.createdAt)),
    h("td", {}, final ? null : h("button", {
      type: "button", class: "danger", testid: "cancel", "aria-label": `Cancel batch job ${id}`,
      onclick: () => cancelBatch(b),
    }, "Cancel")));
}

function poolRow(p) {
  return h("tr", { testid: `pool-${p.name}-${p.version}` },
    h("th", { scope: "row" }, text(p.name)), h("td", {}, text(p.version)),
    h("td", { class: "num" }, text(p.initialPoolSize)), h("td", { class: "num" }, text(p.maxPoolSize)),
    h("td", {}, pill(p.status)));
}

function graphRow(g) {
  return h("tr", { testid: `graph-${g.name}` },
    h("th", { scope: "row" }, text(g.name)), h("td", {}, pill(g.status)),
    h("td", {}, list(g.nodes).map((node) => (typeof node === "string" ? node : node?.name ?? "?")).join(", ") || "—"),
    statCells(g.stats || {}));
}

function errorRow(e) {
  return h("tr", { testid: "error" },
    h("td", {}, clock(e.time)),
    h("td", {}, `${text(e.model)}${e.version != null ? ` v${e.version}` : ""}`),
    h("td", { class: "num" }, text(e.status)),
    h("td", { class: "wrap", testid: "error-message" }, text(e.message)),
    h("td", { title: e.replicaId ?? "" }, text(e.replicaId)),
    h("td", {}, h("code", {}, text(e.requestId))));
}

// ------------------------------------------------------------------ refreshing
async function fetchWithin(url, options, timeoutMs) {
  const abort = new AbortController();
  const timeout = setTimeout(() => abort.abort(), timeoutMs);
  try {
    return await fetch(url, { credentials: "same-origin", cache: "no-store", ...options, signal: abort.signal });
  } catch (error) {
    throw new Error(abort.signal.aborted ? `no answer within ${timeoutMs / 1000} s` : error.message);
  } finally {
    clearTimeout(timeout);
  }
}

/** The API's own words for a refusal ({"error", "field"}), else the HTTP status. */
async function refusal(response) {
  const body = await response.json().catch(() => null);
  const words = body?.error ?? `HTTP ${response.status} ${response.statusText}`.trim();
  return body?.field ? `${words} (field: ${body.field})` : words;
}

function showRefresh(ok, words, loginLink = false) {
  const status = $("refresh-status");
  status.className = `pill ${ok ? "state-running" : "state-failed"}`;
  status.replaceChildren(words);
  if (loginLink) status.append(" ", h("a", { href: "/ui", testid: "login-link" }, "Log in again"));
  document.body.classList.toggle("stale", !ok);
}

async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetchWithin("/ui/state", { headers: { accept: "application/json" } }, STATE_TIMEOUT_MS);
    if (response.status === 401) {
      showRefresh(false, "Session expired.", true);
    } else if (!response.ok) {
      showRefresh(false, `Refresh failed: ${await refusal(response)}`);
    } else {
      render(await response.json());
      showRefresh(true, "Live");
      $("last-refresh").textContent = `Updated ${clock(Date.now() / 1000)}`;
    }
  } catch (error) {
    showRefresh(false, `Refresh failed: ${error.message}`);
  } finally {
    timer = setTimeout(refresh, POLL_MS);
  }
}

// ------------------------------------------------------------------ actions
function say(words, ok) {
  const message = $("message");
  message.className = `message ${ok ? "ok" : "error"}`;
  message.textContent = words;
  message.hidden = false;
}

/** Ask, then send one management API call with the CSRF token; a declined confirmation sends nothing. */
async function act(question, method, url) {
  if (!window.confirm(question)) return;
  say("Working…", true);
  try {
    const response = await fetchWithin(url, {
      method, headers: { accept: "application/json", [CSRF_HEADER]: csrfToken },
    }, ACTION_TIMEOUT_MS);
    if (!response.ok) {
      say(`Refused: ${await refusal(response)}`, false);
    } else {
      const body = await response.json().catch(() => ({}));
      say(body.status ?? (body.state ? `Batch job ${body.state}` : "Done"), true);
    }
  } catch (error) {
    say(`Request failed: ${error.message}`, false);
  }
  refresh();
}

const path = (...parts) => parts.map((part) => encodeURIComponent(String(part))).join("/");

function setDefault(v) {
  act(`Make version ${v.version} the default of ${v.name}?`, "PUT", `/models/${path(v.name, v.version)}/set-default`);
}

function cancelBatch(b) {
  act(`Cancel batch job ${b.executionId}? Rows already scored are kept.`, "POST",
    `/batches/${path(b.executionId)}/cancel`);
}

function openScale(v) {
  scaling = { name: v.name, version: v.version };
  const form = $("scale-form");
  $("scale-target").textContent = `${v.name} version ${v.version}`;
  form.elements.min_worker.value = v.minWorkers ?? 1;
  form.elements.max_worker.value = v.maxWorkers ?? v.minWorkers ?? 1;
  $("scale-dialog").showModal();
}

function submitScale(event) {
  event.preventDefault();
  const form = event.target;
  const low = form.elements.min_worker.value, high = form.elements.max_worker.value;
  const target = scaling;
  $("scale-dialog").close();
  if (!target) return;
  const query = new URLSearchParams({ min_worker: low, max_worker: high });
  act(`Scale ${target.name} version ${target.version} to ${low}–${high} workers?`, "PUT",
    `/models/${path(target.name, target.version)}?${query}`);
}

async function logout() {
  try {
    await fetchWithin("/ui/logout", { method: "POST", redirect: "manual" }, STATE_TIMEOUT_MS);
  } finally {
    window.location.assign("/ui");
  }
}

$("scale-form").addEventListener("submit", submitScale);
$("scale-cancel").addEventListener("click", () => $("scale-dialog").close());
$("scale-dialog").addEventListener("close", () => { scaling = null; });
$("logout").addEventListener("click", logout);
refresh();
