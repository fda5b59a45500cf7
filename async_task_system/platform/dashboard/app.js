// The platform's dashboard: agents, tasks with filters, a task's live log, the timeline.
// Plain JavaScript, no build step, nothing loaded from elsewhere. Every value shown comes from
// agents and scripts we do not trust, so it is written with textContent, never as HTML; the
// timeline SVG is shown through an <img> (an image cannot run script).
"use strict";

const REFRESH_SECONDS = 3;
const PAGE_SIZE = 50;
const LOG_LINES_KEPT = 5000;

const state = {
  token: null,
  offset: 0,
  total: 0,
  selected: null, // task id whose detail and log are shown
  logAbort: null, // AbortController of the open log stream
  timer: null,
  timelineUrl: null,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${state.token}` },
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body.error || body.detail || message;
      if (typeof message !== "string") message = JSON.stringify(message);
    } catch (_) {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    return;
  }
  box.textContent = error.status === 401 ? "The token was refused: enter the platform's token." : String(error.message || error);
  box.hidden = false;
  if (error.status === 401) logout();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text);
  else td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function badge(text) {
  const span = document.createElement("span");
  span.className = `badge s-${String(text).replace(/[^a-z_]/g, "")}`;
  span.textContent = text;
  return span;
}

function labels(map) {
  const box = document.createElement("span");
  for (const [key, value] of Object.entries(map || {})) {
    const span = document.createElement("span");
    span.className = "label";
    span.textContent = `${key}=${value}`;
    box.appendChild(span);
  }
  return box;
}

function toSeconds(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return value;
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? null : parsed / 1000;
}

function when(value) {
  const seconds = toSeconds(value);
  return seconds === null ? "" : new Date(seconds * 1000).toLocaleTimeString();
}

function duration(task) {
  const start = toSeconds(task.started_at);
  if (start === null) return "";
  const end = toSeconds(task.completed_at) ?? Date.now() / 1000;
  return `${Math.max(0, end - start).toFixed(2)} s`;
}

async function refreshAgents() {
  const agents = await (await api("/agents")).json();
  const body = $("agents").tBodies[0];
  body.replaceChildren();
  const select = $("filter-agent");
  const chosen = select.value;
  const known = new Set([...select.options].map((o) => o.value));
  for (const agent of agents) {
    const row = body.insertRow();
    row.dataset.agent = agent.agent_id;
    cell(row, agent.agent_id);
    cell(row, badge(agent.state || "online"));
    const capacity = agent.capacity ?? agent.max_concurrent ?? "?";
    // running: started and not ended, as the platform knows it; sent but not started yet: "+n sent"
    const running = agent.running ?? 0;
    const waiting = Math.max(0, (agent.in_flight ?? running) - running);
    cell(row, `${running} / ${capacity}${waiting ? ` (+${waiting} sent)` : ""}`);
    cell(row, labels(agent.labels));
    cell(row, agent.transport || "");
    cell(row, agent.version || "");
    cell(row, when(agent.last_seen));
    if (!known.has(agent.agent_id)) {
      const option = document.createElement("option");
      option.value = option.textContent = agent.agent_id;
      select.appendChild(option);
    }
  }
  select.value = chosen;
  $("agents-count").textContent = `(${agents.filter((a) => (a.state || "online") === "online").length} online)`;
}

async function refreshTasks() {
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset });
  for (const [name, id] of [["agent_id", "filter-agent"], ["status", "filter-status"], ["type", "filter-type"]]) {
    if ($(id).value) query.set(name, $(id).value);
  }
  const response = await api(`/tasks?${query}`);
  const tasks = await response.json();
  state.total = Number(response.headers.get("X-Total-Count") ?? tasks.length);
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  for (const task of tasks) {
    const row = body.insertRow();
    row.dataset.task = task.task_id;
    if (task.task_id === state.selected) row.classList.add("selected");
    cell(row, task.task_id);
    cell(row, task.agent_id || "");
    cell(row, task.type);
    cell(row, badge(task.status));
    cell(row, task.exit_code);
    cell(row, when(task.created_at));
    cell(row, duration(task));
    row.addEventListener("click", () => select(task.task_id));
  }
  const last = Math.min(state.offset + tasks.length, state.total);
  $("page").textContent = state.total ? `${state.offset + 1}-${last} of ${state.total}` : "none";
  $("tasks-count").textContent = `(${state.total})`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= state.total;
}

async function refreshTimeline() {
  const svg = await (await api("/timeline")).blob();
  const url = URL.createObjectURL(svg);
  const image = document.createElement("img");
  image.alt = "timeline of the platform's tasks";
  image.src = url;
  $("timeline").replaceChildren(image);
  if (state.timelineUrl) URL.revokeObjectURL(state.timelineUrl);
  state.timelineUrl = url;
}

async function refreshDetail() {
  if (!state.selected) return;
  const task = await (await api(`/tasks/${encodeURIComponent(state.selected)}`)).json();
  $("detail-id").textContent = task.task_id;
  const status = $("detail-status");
  status.className = `badge s-${String(task.status).replace(/[^a-z_]/g, "")}`;
  status.textContent = task.status;
  $("detail-script").textContent = task.script || "";
  $("cancel").disabled = ["completed", "failed", "cancelled", "timed_out", "lost", "interrupted"].includes(task.status);
}

async function refresh() {
  try {
    await Promise.all([refreshAgents(), refreshTasks(), refreshTimeline(), refreshDetail()]);
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    showError(null);
  } catch (error) {
    showError(error);
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (!state.token) return;
  state.timer = setTimeout(async () => {
    if (document.visibilityState === "visible") await refresh();
    schedule();
  }, REFRESH_SECONDS * 1000);
}

// ------------------------------------------------------------------ live log (SSE over fetch)
// EventSource cannot send an Authorization header, so the stream is read with fetch and parsed
// here; after a dropped connection it resumes with Last-Event-ID, as the server expects.

function appendLog(stream, line) {
  const log = $("log");
  const span = document.createElement("span");
  if (stream === "stderr") span.className = "stderr";
  span.textContent = line.endsWith("\n") ? line : `${line}\n`;
  log.appendChild(span);
  while (log.childNodes.length > LOG_LINES_KEPT) log.removeChild(log.firstChild);
  log.scrollTop = log.scrollHeight;
}

async function followLog(taskId) {
  let lastId = null;
  const controller = new AbortController();
  state.logAbort = controller;
  for (let attempt = 0; attempt < 20 && !controller.signal.aborted; attempt++) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const response = await api(`/tasks/${encodeURIComponent(taskId)}/logs`, { headers, signal: controller.signal });
      $("log-state").textContent = "(live)";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event.id !== null) lastId = event.id;
          if (event.type === "log") {
            const data = JSON.parse(event.data);
            appendLog(data.stream, data.line);
          } else if (event.type === "status") {
            const data = JSON.parse(event.data);
            if (state.selected === taskId && data.status) {
              const status = $("detail-status");
              status.className = `badge s-${String(data.status).replace(/[^a-z_]/g, "")}`;
              status.textContent = data.status;
            }
          } else if (event.type === "end") {
            $("log-state").textContent = "(ended)";
            refresh();
            return;
          }
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError) {
        $("log-state").textContent = `(${error.message})`;
        return;
      }
    }
    $("log-state").textContent = "(reconnecting)";
    await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** attempt, 5000)));
  }
}

function parseEvent(text) {
  const event = { id: null, type: "message", data: "" };
  const data = [];
  for (const line of text.split("\n")) {
    if (line.startsWith(":")) continue; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") data.push(value);
  }
  event.data = data.join("\n");
  return event;
}

async function select(taskId) {
  if (state.logAbort) state.logAbort.abort();
  state.selected = taskId;
  $("detail").hidden = false;
  $("log").replaceChildren();
  $("log-state").textContent = "";
  for (const row of $("tasks").tBodies[0].rows) row.classList.toggle("selected", row.dataset.task === taskId);
  try {
    await refreshDetail();
  } catch (error) {
    showError(error);
  }
  followLog(taskId);
}

// ------------------------------------------------------------------ session

function login(token) {
  state.token = token;
  sessionStorage.setItem("platform-token", token);
  $("login").hidden = true;
  $("session").hidden = false;
  $("main").hidden = false;
  refresh().then(schedule);
}

function logout() {
  state.token = null;
  sessionStorage.removeItem("platform-token");
  clearTimeout(state.timer);
  if (state.logAbort) state.logAbort.abort();
  $("login").hidden = false;
  $("session").hidden = true;
  $("main").hidden = true;
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  login($("token").value.trim());
});
$("logout").addEventListener("click", logout);
$("filters").addEventListener("change", () => {
  state.offset = 0;
  refresh();
});
$("prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE);
  refresh();
});
$("next").addEventListener("click", () => {
  state.offset += PAGE_SIZE;
  refresh();
});
$("cancel").addEventListener("click", async () => {
  try {
    await api(`/tasks/${encodeURIComponent(state.selected)}/cancel`, { method: "POST" });
    await refresh();
  } catch (error) {
    showError(error);
  }
});

// A token in the fragment (#token=...) never reaches the server's logs; it is moved to this
// tab's session storage and removed from the address bar.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  history.replaceState(null, "", location.pathname + location.search);
  login(fragment.get("token"));
} else if (sessionStorage.getItem("platform-token")) {
  login(sessionStorage.getItem("platform-token"));
}
