// The voxgate console page: sign-in (one-time link → cookie + CSRF), controls, transcripts,
// event log. All audio and protocol work is in voxgate-client.js.

import { PROBLEMS } from "./voxgate-client.js";
import { createClient } from "./voxgate.js";

const $ = (id) => document.getElementById(id);
const LOG_MAX = 500;
const STATE_WORDS = {
  connecting: "Connecting…",
  ready: "Connected — listening",
  resuming: "Connection lost — resuming the call…",
  reconnecting: "Connection lost — reconnecting…",
  closed: "Not connected",
};
/** voxgate's reason for moving to a new upstream connection, in words. */
function upstreamReason(reason) {
  if (!reason) return "";
  if (reason.startsWith("lost")) return "link lost";
  if (reason === "session_expired" || reason === "recycle") return "planned handover";
  return reason.replace(/_/g, " ");
}
const UPSTREAM_WORDS = {
  reconnecting: "Connected — reconnecting to the voice service…",
  lost: "The voice service connection was lost",
};

let csrfToken = null;
let wasSignedIn = false; // a later 401 means the server restarted or the sign-in expired
let newSessionWhy = null; // why the call was lost, until a new session is ready (or none comes)
const transcriptItems = new Map(); // item id → <li>
const responseItems = new Map(); // response id → its assistant item ids (proactive turns)
const RESPONSES_KEPT = 64;
const SIGNED_OUT_AGAIN = "You are no longer signed in: the voxgate server restarted or your sign-in "
  + "expired. Open the new console link printed by `voxgate serve`, or paste it below.";

// ---------------------------------------------------------------- sign-in

/** Trade a one-time login token for the session cookie; true when signed in. */
async function loginWith(token) {
  const r = await fetch("/console/api/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  }).catch(() => null);
  if (!r || !r.ok) return false;
  signedIn((await r.json()).csrf_token);
  return true;
}

function signedIn(token) {
  csrfToken = token;
  wasSignedIn = true;
  $("signin").hidden = true;
  $("signin-link").value = "";
}

/** The one state after a 401: signed out, one message, the sign-in box as the way back in. */
function signedOut(message) {
  csrfToken = null;
  newSessionWhy = null;
  showNote("");
  showProblem(message);
  $("signin").hidden = false;
  setStatus(client ? client.state : "closed");
}

async function signIn() {
  const params = new URLSearchParams(location.search);
  const token = params.get("login");
  if (token) {
    // Drop the one-time token from the address bar and history before anything else.
    params.delete("login");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    if (await loginWith(token)) return true;
  }
  const r = await fetch("/console/api/session", { credentials: "same-origin" }).catch(() => null);
  if (!r) {
    showProblem(PROBLEMS.unreachable);
    return false;
  }
  if (r.ok) {
    signedIn((await r.json()).csrf_token);
    return true;
  }
  signedOut(token ? "This console link was already used or has expired. " + PROBLEMS.login_required
                  : PROBLEMS.login_required);
  return false;
}

/** The sign-in box: a pasted console link (or its token) signs this page in again. */
async function signInFromBox(e) {
  e.preventDefault();
  const text = $("signin-link").value.trim();
  let token = text;
  try {
    token = new URL(text, location.href).searchParams.get("login") || text;
  } catch { /* a bare token */ }
  if (token && await loginWith(token)) {
    showProblem("");
    setStatus(client ? client.state : "closed");
    return;
  }
  showProblem("That console link was already used, has expired, or is not a console link. "
              + "Restart `voxgate serve` or ask its operator for a new one.");
}

async function getKey() {
  let r;
  try {
    r = await fetch("/console/api/key", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken || "" },
      body: JSON.stringify({ session: sessionConfig() }),
    });
  } catch {
    throw Object.assign(new Error(PROBLEMS.unreachable), { code: "unreachable" });
  }
  if (r.status === 401 || r.status === 403) {
    throw Object.assign(new Error(PROBLEMS.login_required), { code: "login_required" });
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    const message = body.error?.message || PROBLEMS.unreachable;
    throw Object.assign(new Error(message), { code: r.status >= 500 ? "unreachable" : "bad_settings" });
  }
  return (await r.json()).value;
}

// ---------------------------------------------------------------- settings

function handsFree() {
  return document.querySelector('input[name="mode"]:checked').value === "handsfree";
}

/** The VAD silence in ms as sent (100–3000, 500 when empty); the field shows the same. */
function silenceMs() {
  const field = $("silence");
  const raw = Number(field.value);
  const ms = field.value.trim() === "" || !Number.isFinite(raw)
    ? 500 : Math.min(3000, Math.max(100, Math.round(raw)));
  if (field.value !== String(ms)) field.value = String(ms);
  return ms;
}

function sessionConfig() {
  const silence = silenceMs();
  const config = {
    type: "realtime",
    audio: {
      input: {
        format: { type: "audio/pcm", rate: 24000 },
        turn_detection: handsFree() ? { type: "server_vad", silence_duration_ms: silence } : null,
        transcription: $("transcribe").checked ? { model: "gpt-4o-mini-transcribe" } : null,
      },
      output: { format: { type: "audio/pcm", rate: 24000 }, voice: $("voice").value },
    },
  };
  const instructions = $("instructions").value.trim();
  if (instructions) config.instructions = instructions;
  return config;
}

function liveUpdate() {
  if (!client || client.state !== "ready") return;
  const { type, ...rest } = sessionConfig();
  if (!rest.instructions) delete rest.instructions;
  delete rest.audio.output.format;
  delete rest.audio.input.format;
  client.setHandsFree(handsFree());
  client.updateSession(rest);
}

// ---------------------------------------------------------------- UI helpers

function showProblem(message) {
  const box = $("problem");
  box.textContent = message || "";
  box.hidden = !message;
}

/** A persistent, polite note about the connection (resumed, new session …). */
function showNote(message, kind = "info") {
  const box = $("conn-note");
  box.textContent = message || "";
  box.dataset.kind = kind;
  box.hidden = !message;
}

let lastReason = "";

function setStatus(state, reason = lastReason) {
  lastReason = reason || "";
  const el = $("status");
  const upstream = client && state === "ready" ? client.upstream : "ok";
  el.dataset.state = state;
  el.dataset.upstream = upstream;
  let text = STATE_WORDS[state] || state;
  el.dataset.signedOut = String(!csrfToken && state === "closed");
  if (!csrfToken && state === "closed") text = "Signed out";
  if (state === "ready" && !handsFree()) text = "Connected — hold to talk";
  if (UPSTREAM_WORDS[upstream]) text = UPSTREAM_WORDS[upstream];
  if (reason && state !== "ready" && state !== "closed") text += ` (${reason})`;
  $("status-text").textContent = text;
  const running = state !== "closed";
  $("start").disabled = running || !csrfToken;
  $("stop").disabled = !running;
  $("ptt").disabled = state !== "ready";
}

function syncMode() {
  const ptt = !handsFree();
  $("ptt").hidden = !ptt;
  $("ptt-help").hidden = !ptt;
  $("silence").disabled = ptt;
  if (client) setStatus(client.state);
}

const WHO = { user: "You", assistant: "Assistant", context: "Context" };

function transcriptLine(role, itemId) {
  let li = transcriptItems.get(itemId);
  if (!li) {
    li = document.createElement("li");
    li.className = `${role} partial`;
    li.dataset.item = itemId;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = WHO[role] || role;
    const text = document.createElement("span");
    text.className = "text";
    li.append(who, text);
    $("transcript").append(li);
    transcriptItems.set(itemId, li);
    $("empty").hidden = true;
  }
  return li;
}

function onTranscript({ role, itemId, text, final }) {
  const li = transcriptLine(role, itemId);
  const span = li.querySelector(".text");
  span.textContent = final ? text : span.textContent + text;
  if (final) li.classList.remove("partial");
  const list = $("transcript");
  list.scrollTop = list.scrollHeight;
}

/** A turn voxgate started on its own (a proactive message): labelled in the transcript. */
function onMessageDelivered(ev) {
  if (ev.mode === "context") {
    const li = transcriptLine("context", ev.item_id || ev.message_id);
    li.classList.remove("partial");
    li.querySelector(".text").textContent = ev.text || "";
    return;
  }
  for (const itemId of responseItems.get(ev.response_id) || []) {
    const li = transcriptLine("assistant", itemId);
    li.classList.add("proactive");
    li.dataset.message = ev.message_id;
    li.querySelector(".who").textContent = "Assistant · proactive";
  }
}

function rememberOutput(ev) {
  if (ev.item?.type !== "message" || !ev.response_id) return;
  const ids = responseItems.get(ev.response_id) || [];
  ids.push(ev.item.id);
  responseItems.set(ev.response_id, ids);
  while (responseItems.size > RESPONSES_KEPT) responseItems.delete(responseItems.keys().next().value);
}

function summarize(ev) {
  switch (ev.type) {
    case "voxgate.message.delivered": return `${ev.type} ${ev.mode} ${ev.message_id}`;
    case "voxgate.session.resumable": return `${ev.type} (grace ${ev.grace_s} s)`;
    case "voxgate.session.resume": return `${ev.type} received_events=${ev.received_events}`;
    case "voxgate.session.resumed": return `${ev.type} replayed_events=${ev.replayed_events}`;
    case "voxgate.upstream.reconnecting": return `${ev.type} reason=${ev.reason}`;
    case "voxgate.upstream.reconnected":
      return `${ev.type} gap_ms=${ev.gap_ms} state_restored=${ev.state_restored}`;
    case "voxgate.upstream.lost": return `${ev.type} reason=${ev.reason}`;
    case "response.output_audio.delta": return `${ev.type} ${ev.item_id} ${ev.delta.length}b64`;
    case "error": return `error ${ev.error?.code || ""}: ${ev.error?.message || ""}`;
    case "conversation.item.truncate":
      return `${ev.type} ${ev.item_id} audio_end_ms=${ev.audio_end_ms}`;
    case "input_audio_buffer.speech_started": return `${ev.type} at ${ev.audio_start_ms} ms`;
    case "input_audio_buffer.speech_stopped": return `${ev.type} at ${ev.audio_end_ms} ms`;
    default: {
      const text = ev.transcript ?? ev.delta ?? ev.text;
      return typeof text === "string" ? `${ev.type} “${text}”` : ev.type;
    }
  }
}

const ARROWS = { in: "←", out: "→", note: "•" };

function log(direction, ev) {
  if (!$("log-audio").checked && /audio\.delta$|audio_transcript\.delta$/.test(ev.type)) return;
  const list = $("log");
  const li = document.createElement("li");
  li.className = ev.type === "error" ? "err" : direction;
  li.dataset.type = ev.type;
  const t = new Date().toLocaleTimeString([], { hour12: false });
  const text = direction === "note" ? ev.text : summarize(ev);
  li.textContent = `${t} ${ARROWS[direction]} ${text}`;
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(li);
  while (list.children.length > LOG_MAX) list.firstChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------- wiring

let client = null;

/** Why a resume failed, in words (a restarted server no longer knows the call). */
function resumeWords(why) {
  if (/voxgate_resume_refused/.test(why || "")) {
    return "voxgate_resume_refused: the server no longer has this call, it may have restarted";
  }
  return why || "no answer";
}

function makeClient() {
  const processing = $("processing").checked;
  const c = createClient({
    transport: $("webrtc").checked ? "webrtc" : "websocket",
    silenceMs: silenceMs(),
    getKey,
    handsFree: handsFree(),
    audio: { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
  });
  c.on("state", ({ state, reason }) => {
    setStatus(state, reason);
    if (state === "ready" && reason !== "resumed") showProblem("");
    if (state === "resuming") showNote("The connection dropped. Resuming the call — keep talking, what you say is kept.", "warn");
    if (state === "reconnecting" && newSessionWhy === null && c.stats.states.some((s) => s.state === "ready")) {
      newSessionWhy = "The connection to voxgate was lost";
    }
    if (state === "ready" && newSessionWhy !== null) {
      showNote(`${newSessionWhy}, so this is a new session: the assistant does not remember `
               + "the earlier conversation.", "warn");
      newSessionWhy = null;
    }
    if (state === "closed" && newSessionWhy !== null) {
      newSessionWhy = null;
      showNote(""); // no new session came: the problem box says why
    }
    const words = `connection: ${state}${reason ? ` (${reason})` : ""}`;
    log("note", { type: `(state ${state})`, text: words });
  });
  c.on("transport", ({ kind, reason }) => {
    const el = $("transport");
    el.dataset.kind = kind;
    el.textContent = { sse: "via HTTP fallback (SSE)", webrtc: "via WebRTC" }[kind] || "via WebSocket";
    el.title = reason || "";
    el.hidden = false;
    log("note", { type: "(transport)", text: `transport: ${kind}${reason ? ` (${reason})` : ""}` });
  });
  c.on("upstream", ({ state, reason }) => {
    setStatus(c.state);
    const why = upstreamReason(reason);
    const words = state === "ok" ? "voice service: reconnected"
      : `voice service: ${state}${why ? ` (${why})` : ""}`;
    log("note", { type: `(upstream ${state})`, text: words });
  });
  c.on("resume", (r) => {
    if (r.outcome === "resumed") {
      const gap = r.gapMs ? `, ${(r.gapMs / 1000).toFixed(1)} s of your audio re-sent` : "";
      const lost = r.droppedMs ? `, ${(r.droppedMs / 1000).toFixed(1)} s of older audio dropped` : "";
      showNote(`Call resumed after ${r.ms} ms (${r.replayed} missed events caught up${gap}${lost}).`);
      log("note", { type: "(resumed)", text: `resumed the same session in ${r.ms} ms` });
    } else {
      const why = resumeWords(r.why);
      newSessionWhy = `Could not resume the call (${why})`;
      showNote(`Could not resume the call (${why}). Starting a new session…`, "warn");
      log("note", { type: "(resume failed)", text: `resume failed: ${r.why}; starting a new session` });
    }
  });
  c.on("problem", ({ code, message }) => {
    if (code === "login_required") {
      signedOut(wasSignedIn ? SIGNED_OUT_AGAIN : PROBLEMS.login_required);
    } else if (code !== "resume_failed") {
      showProblem(message); // resume_failed: the connection note says it, politely
    }
  });
  c.on("notice", ({ message }) => showProblem(message));
  c.on("transcript", onTranscript);
  c.on("level", ({ rms }) => { $("level").value = Math.min(1, Math.sqrt(rms) * 1.5); });
  c.on("latency", ({ ms }) => { $("latency").value = `${ms} ms`; });
  c.on("event", (ev) => {
    log("in", ev);
    if (ev.type === "input_audio_buffer.committed" && ev.item_id) transcriptLine("user", ev.item_id);
    if (ev.type === "response.output_item.added") rememberOutput(ev);
    if (ev.type === "voxgate.message.delivered") onMessageDelivered(ev);
  });
  c.on("sent", (ev) => log("out", ev));
  c.on("bargein", ({ why }) => log("out", { type: `(playback stopped: ${why})` }));
  return c;
}

function bindPushToTalk() {
  const btn = $("ptt");
  const down = (e) => {
    if (!client || btn.hidden) return;
    e.preventDefault();
    btn.setAttribute("aria-pressed", "true");
    client.pttDown();
  };
  const up = () => {
    if (btn.getAttribute("aria-pressed") !== "true") return;
    btn.setAttribute("aria-pressed", "false");
    client?.pttUp();
  };
  btn.addEventListener("pointerdown", down);
  btn.addEventListener("pointerup", up);
  btn.addEventListener("pointercancel", up);
  btn.addEventListener("pointerleave", up);
  const isSpace = (e) => e.code === "Space" || e.key === " ";
  const inField = (e) => /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
  document.addEventListener("keydown", (e) => {
    if (isSpace(e) && !e.repeat && !inField(e) && !btn.hidden && !btn.disabled) down(e);
  });
  document.addEventListener("keyup", (e) => { if (isSpace(e)) up(); });
}

async function main() {
  setStatus("closed");
  syncMode();
  bindPushToTalk();
  $("start").addEventListener("click", async () => {
    showProblem("");
    showNote("");
    client = makeClient();
    window.voxgateConsole.client = client;
    await client.start();
  });
  $("stop").addEventListener("click", () => client?.stop("stopped by you"));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => { syncMode(); liveUpdate(); });
  }
  $("silence").addEventListener("change", silenceMs);
  $("signin").addEventListener("submit", signInFromBox);
  for (const id of ["instructions", "voice", "silence", "transcribe"]) {
    $(id).addEventListener("change", liveUpdate);
  }
  $("settings").addEventListener("submit", (e) => e.preventDefault());
  $("log-clear").addEventListener("click", () => { $("log").textContent = ""; });
  if (await signIn()) setStatus("closed");
}

// A small read-only window for tests and curious users; it never holds a key.
window.voxgateConsole = {
  client: null,
  stats() {
    const c = window.voxgateConsole.client;
    if (!c) return null;
    const s = c.stats;
    const rms = s.playedOutSamples ? Math.sqrt(s.playedSumSq / s.playedOutSamples) : 0;
    return { ...s, state: c.state, playing: c.playing, playedRms: rms, transport: c.transport,
             sse: c.transport === "sse" && c.ws ? c.ws.stats : null,
             playedMs: Math.round(s.playedSamples / 24) };
  },
  signedIn: () => csrfToken !== null,
};

main();
