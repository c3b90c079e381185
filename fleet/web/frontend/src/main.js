// The espfleet web console: the fleet at a glance from the retained state over
// MQTT-over-WebSocket (mqtt.js), the fleet's API ops, and talking in a room from the
// browser (docs/protocol.md §8, with trickle ICE, §8.6). Credentials come from the
// console server's /login (short-lived, minted by the controller, §11.2).
import mqtt from "mqtt";
import { Talk } from "./talk.js";

const $ = (sel) => document.querySelector(sel);
const CREDS_KEY = "espfleet.console.credentials";

const state = {
  config: null, // {prefix}
  creds: null, // {username, password, until, ws_url}
  client: null,
  devices: new Map(), // id -> {status, state, tele}
  rooms: [],
  sessions: [],
  callTargets: new Map(), // device id -> the call target chosen in its row
  dndWanted: new Map(), // device id -> the do-not-disturb asked from its row, until its result
  pending: new Map(), // request id -> {resolve, quiet}
  talk: null,
  log: [],
};
window.fleetConsole = state; // the browser tests read it

function topic(...parts) {
  return [state.config.prefix, ...parts].join("/");
}

function note(text, kind = "info") {
  const line = `${new Date().toLocaleTimeString()} ${text}`;
  state.log.unshift({ kind, text });
  state.log.length = Math.min(state.log.length, 50);
  const box = $("#log");
  const item = document.createElement("div");
  item.className = kind;
  item.textContent = line;
  box.prepend(item);
  while (box.childElementCount > 50) box.lastChild.remove();
}

// --- signing in ---------------------------------------------------------------------------
async function signIn(event) {
  event.preventDefault();
  const password = $("#password").value;
  $("#login-error").textContent = "";
  const reply = await fetch("login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ password }),
  });
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    $("#login-error").textContent = body.error || `sign-in failed (${reply.status})`;
    return;
  }
  sessionStorage.setItem(CREDS_KEY, JSON.stringify(body));
  connect(body);
}

function signedOut(why) {
  sessionStorage.removeItem(CREDS_KEY);
  if (state.client) state.client.end(true);
  state.client = null;
  document.body.dataset.phase = "login";
  $("#login-error").textContent = why;
}

function connect(creds) {
  state.creds = creds;
  document.body.dataset.phase = "connecting";
  $("#who").textContent = `${creds.username}, until ${new Date(creds.until * 1000).toLocaleTimeString()}`;
  const client = mqtt.connect(creds.ws_url, {
    clientId: creds.username,
    username: creds.username,
    password: creds.password,
    protocolVersion: 4,
    reconnectPeriod: 0, // a refused page signs in again rather than hammering the broker
    connectTimeout: 5000,
    will: { topic: topic("meet", creds.username, "up"), payload: '{"type":"leave"}', qos: 1 },
  });
  state.client = client;
  client.on("connect", () => {
    document.body.dataset.phase = "live";
    client.subscribe(
      [
        topic("dev", "+", "status"),
        topic("dev", "+", "state"),
        topic("dev", "+", "tele"),
        topic("api", "result"),
        topic("events"),
        topic("meet", creds.username, "down"),
      ],
      { qos: 1 },
    );
    note(`connected as ${creds.username}`);
    roomsChanged();
  });
  client.on("message", onMessage);
  client.on("error", (err) => {
    const refused = /Not authorized|Bad username|refused/i.test(String(err.message));
    signedOut(refused ? "the broker refused these credentials (expired?): sign in again" : `broker: ${err.message}`);
  });
  client.on("close", () => {
    if (document.body.dataset.phase !== "live") return;
    // The broker closes a page whose credentials expire (docs/protocol.md 11.2).
    const expired = Date.now() / 1000 >= creds.until;
    signedOut(
      expired ? "your credentials expired: sign in again" : "disconnected from the broker: sign in again",
    );
  });
}

// --- the fleet view -----------------------------------------------------------------------
function onMessage(t, payload) {
  const parts = t.slice(state.config.prefix.length + 1).split("/");
  let doc = null;
  if (payload.length) {
    try {
      doc = JSON.parse(new TextDecoder().decode(payload));
    } catch {
      return;
    }
  }
  if (parts[0] === "dev" && parts.length === 3) {
    const entry = state.devices.get(parts[1]) || {};
    const before = meetingKey(entry.state);
    entry[parts[2]] = doc;
    if (doc === null && parts[2] === "status") state.devices.delete(parts[1]);
    else state.devices.set(parts[1], entry);
    // A device that enters, leaves or changes a room changes the rooms' sessions and members.
    if (parts[2] === "state" && meetingKey(doc) !== before) roomsChanged();
    scheduleRender();
  } else if (parts[0] === "api" && parts[1] === "result" && doc) {
    onResult(doc);
  } else if (parts[0] === "events" && doc) {
    note(`${doc.kind}${doc.room ? " " + doc.room : ""}${doc.device ? " " + doc.device : ""}`);
    if (ROOM_EVENTS.has(doc.kind)) roomsChanged();
  } else if (parts[0] === "meet" && doc && state.talk) {
    state.talk.handle(doc);
  }
}

// Events after which the controller's room list reads differently (a session began or
// ended, or its media path changed), beside the devices' own reports.
const ROOM_EVENTS = new Set(["session_start", "session_end", "media"]);

function meetingKey(deviceState) {
  const m = deviceState?.meeting;
  return m ? `${m.room} ${m.session} ${(m.peers || []).length}` : "";
}

// One rooms request at a time: changes that arrive meanwhile are folded into one more. A
// request whose result never comes (the page lost the broker) holds the next one 10 s at most.
let roomsInFlight = false;
let roomsStale = false;
async function roomsChanged() {
  if (roomsInFlight) {
    roomsStale = true;
    return;
  }
  roomsInFlight = true;
  try {
    do {
      roomsStale = false;
      await Promise.race([refreshRooms(), new Promise((resolve) => setTimeout(resolve, 10000))]);
    } while (roomsStale);
  } finally {
    roomsInFlight = false;
  }
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    // Not under a person choosing a call target: re-rendering would close the list.
    if (document.activeElement?.closest("#devices select")) {
      setTimeout(scheduleRender, 500);
      return;
    }
    renderDevices();
  });
}

function naturalKey(id) {
  return id.replace(/\d+/g, (n) => n.padStart(8, "0"));
}

function renderDevices() {
  const rows = [...state.devices.entries()].sort((a, b) => (naturalKey(a[0]) < naturalKey(b[0]) ? -1 : 1));
  const body = $("#devices tbody");
  body.replaceChildren();
  let online = 0;
  for (const [id, d] of rows) {
    const isOnline = d.status?.online === true;
    online += isOnline ? 1 : 0;
    const meeting = d.state?.meeting;
    const mic = d.state?.mic !== false;
    const peers = d.tele?.audio || [];
    const level = peers.length ? Math.max(...peers.map((p) => p.level || 0)) : 0;
    const tr = document.createElement("tr");
    tr.dataset.device = id;
    tr.className = isOnline ? "online" : "offline";
    tr.innerHTML = `<td class="id"></td><td class="presence"></td><td class="room"></td>
      <td class="mic"></td><td class="quiet"></td><td class="level"><meter min="0" max="0.3"></meter></td><td class="actions"></td>
      <td class="call"></td>`;
    tr.querySelector(".id").textContent = id;
    if (d.state?.dnd) tr.querySelector(".id").append(badge("dnd", "do not disturb"));
    tr.querySelector(".presence").textContent = isOnline ? "online" : "offline";
    tr.querySelector(".room").textContent = meeting ? `${meeting.room} (${count(meeting.peers || [], "peer")})` : "—";
    tr.querySelector(".mic").textContent = mic ? "on" : "muted";
    tr.querySelector(".quiet").append(dndToggle(id, d.state?.dnd === true));
    tr.querySelector("meter").value = level;
    const actions = tr.querySelector(".actions");
    actions.append(
      button("join", "join", () => api("join", { device: id, room: roomInput(), mic: true })),
      button("leave", "leave", () => api("leave", { device: id })),
      button(mic ? "mute" : "unmute", "mute", () =>
        meeting ? api("join", { device: id, room: meeting.room, mic: !mic }) : note(`${id} is in no room`, "error"),
      ),
    );
    tr.querySelector(".call").append(...callControls(id, rows));
    body.append(tr);
  }
  renderAnnounceTargets(rows);
  $("#fleet-summary").textContent = `${count(rows, "device")}, ${online} online`;
}

function badge(text, title) {
  const span = document.createElement("span");
  span.className = text;
  span.textContent = text;
  span.title = title;
  return span;
}

// A row's do-not-disturb: checked as the device reports it; while a request from it is
// under way, as asked (and disabled), so the table's re-rendering does not flip it back.
function dndToggle(id, reported) {
  const box = document.createElement("input");
  box.type = "checkbox";
  box.dataset.action = "dnd";
  box.title = "do not disturb: normal announcements and calls pass this device by";
  const wanted = state.dndWanted.get(id);
  box.checked = wanted ?? reported;
  box.disabled = wanted !== undefined;
  box.addEventListener("change", async () => {
    state.dndWanted.set(id, box.checked);
    box.disabled = true;
    await api("dnd", { device: id, on: box.checked });
    state.dndWanted.delete(id);
    scheduleRender();
  });
  return box;
}

// Groups the devices' births name ("all" is every device), sorted.
function groupsOf(rows) {
  const groups = new Set();
  for (const [, d] of rows) for (const g of d.status?.groups || []) if (g !== "all") groups.add(g);
  return [...groups].sort();
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

// A row's call: whom (another device or a group: `group:<name>`; not every device, which
// a call refuses), call, hang up. The choice outlives the table's re-rendering.
function callControls(id, rows) {
  const pick = document.createElement("select");
  pick.dataset.action = "call-target";
  for (const [other] of rows) if (other !== id) pick.append(option(other, other));
  for (const g of groupsOf(rows)) pick.append(option(`group:${g}`, `group ${g}`));
  const chosen = state.callTargets.get(id);
  if (chosen && [...pick.options].some((o) => o.value === chosen)) pick.value = chosen;
  pick.addEventListener("change", () => state.callTargets.set(id, pick.value));
  const call = button("call", "call", () => {
    const target = pick.value;
    const to = target.startsWith("group:") ? { group: target.slice(6) } : { to: target };
    api("call", { device: id, ...to });
  });
  const hangup = button("hang up", "hangup", () => api("hangup", { device: id }));
  return [pick, call, hangup];
}

// The announce box's targets: every device, a group, or one device (kept while re-rendered).
function renderAnnounceTargets(rows) {
  const pick = $("#announce-target");
  const kept = pick.value;
  const options = [option("all", "every device")];
  for (const g of groupsOf(rows)) options.push(option(`group:${g}`, `group ${g}`));
  for (const [id] of rows) options.push(option(`device:${id}`, id));
  const same =
    options.length === pick.options.length && options.every((o, i) => o.value === pick.options[i].value);
  if (same) return;
  pick.replaceChildren(...options);
  if (options.some((o) => o.value === kept)) pick.value = kept;
}

function announce(event) {
  event.preventDefault();
  const text = $("#announce-text").value.trim();
  if (!text) return;
  const target = $("#announce-target").value;
  const fields = { text, priority: $("#announce-priority").value };
  if (target.startsWith("group:")) fields.group = target.slice(6);
  else if (target.startsWith("device:")) fields.device = target.slice(7);
  api("announce", fields);
}

function count(items, noun) {
  return `${items.length} ${noun}${items.length === 1 ? "" : "s"}`;
}

function button(label, action, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.dataset.action = action;
  b.addEventListener("click", onClick);
  return b;
}

function roomInput() {
  return $("#room").value.trim() || "standup";
}

// --- the API ------------------------------------------------------------------------------
let nextId = 1;
// `quiet`: the log shows the result only when it failed (the page's own refreshes).
function api(op, fields = {}, quiet = false) {
  const id = `${state.creds.username}-${nextId++}`;
  // On this user's own request topic: the controller bounds each user's requests apart.
  state.client.publish(topic("api", "by", state.creds.username, op), JSON.stringify({ id, ...fields }), {
    qos: 1,
  });
  return new Promise((resolve) => state.pending.set(id, { resolve, quiet }));
}

function onResult(result) {
  const waiting = result.id && state.pending.get(result.id);
  if (!waiting) return;
  if (!result.done) return; // the acceptance; the final one follows
  state.pending.delete(result.id);
  if (!result.ok || !waiting.quiet) {
    note(`${result.op}: ${result.ok ? "ok" : result.code} ${result.detail || ""}`, result.ok ? "info" : "error");
  }
  waiting.resolve(result);
}

async function refreshRooms() {
  const result = await api("rooms", {}, true);
  state.rooms = result.rooms || [];
  const list = $("#rooms tbody");
  list.replaceChildren();
  for (const r of state.rooms) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td><td></td><td></td>";
    tr.children[0].textContent = r.room;
    tr.children[1].textContent = r.media || "auto";
    tr.children[2].textContent = r.session ? `${r.session} (${r.members})` : "—";
    const pick = button("sessions", "sessions", () => showSessions(r.room));
    tr.children[3].append(pick);
    list.append(tr);
  }
}

async function showSessions(room) {
  const result = await api("sessions", { room, limit: 5 });
  const box = $("#sessions");
  box.replaceChildren();
  for (const s of result.sessions || []) {
    const div = document.createElement("div");
    const who = (s.participants || []).map((p) => p.pid).join(", ");
    div.textContent = `${s.session}: ${new Date(s.started * 1000).toLocaleTimeString()}${
      s.ended ? "–" + new Date(s.ended * 1000).toLocaleTimeString() : " (live)"
    } ${who}`;
    box.append(div);
  }
}

// --- wiring -------------------------------------------------------------------------------
async function start() {
  state.config = await (await fetch("config")).json();
  $("#login").addEventListener("submit", signIn);
  $("#announce-form").addEventListener("submit", announce);
  $("#join-all").addEventListener("click", () => api("join-all", { room: roomInput(), mic: true }));
  $("#leave-all").addEventListener("click", () => api("leave-all", {}));
  $("#mute-all").addEventListener("click", () => api("join-all", { room: roomInput(), mic: false }));
  $("#unmute-all").addEventListener("click", () => api("join-all", { room: roomInput(), mic: true }));
  $("#refresh-rooms").addEventListener("click", roomsChanged);
  $("#sign-out").addEventListener("click", () => signedOut(""));
  $("#talk").addEventListener("click", async () => {
    if (state.talk) {
      await state.talk.leave();
      state.talk = null;
      $("#talk").textContent = "talk";
      return;
    }
    state.talk = new Talk(state, topic, note, { ptt: $("#ptt-only").checked, vanilla: location.hash.includes("vanilla") });
    $("#talk").textContent = "hang up";
    await state.talk.join(roomInput());
  });
  const ptt = $("#ptt");
  const press = (on) => () => state.talk && state.talk.setMic(on);
  ptt.addEventListener("pointerdown", press(true));
  ptt.addEventListener("pointerup", press(false));
  ptt.addEventListener("pointerleave", press(false));
  const saved = sessionStorage.getItem(CREDS_KEY);
  if (saved) connect(JSON.parse(saved));
  else document.body.dataset.phase = "login";
}

start();
