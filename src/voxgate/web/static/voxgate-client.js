// voxgate-client.js — a small browser client for voxgate (OpenAI Realtime protocol, GA shape).
//
// Plain ES module, no build step. Usage:
//
//   import { VoxgateClient } from "/console/static/voxgate-client.js";
//   const client = new VoxgateClient({ getKey: async () => "ek_…" });
//   client.on("state", ({ state, reason }) => …);  // connecting|ready|resuming|reconnecting|closed
//   client.on("upstream", ({ state, reason }) => …);   // ok|reconnecting|lost (voxgate.upstream.*)
//   client.on("resume", ({ outcome, ms, … }) => …);    // resumed | failed (then a fresh session)
//   client.on("transcript", ({ role, itemId, text, final }) => …);
//   client.on("level", ({ rms }) => …);  client.on("latency", ({ ms }) => …);
//   client.on("event", (serverEvent) => …);  client.on("sent", (clientEvent) => …);
//   client.on("problem", ({ code, message }) => …);     // user-facing words
//   await client.start();  …  client.stop();
//
// Audio: the mic goes through an AudioWorklet to PCM16 mono 24 kHz in 20 ms frames, sent as
// binary WebSocket frames (the `voxgate.v1` opt-in). Nothing is sent before `session.created`:
// frames wait in a bounded local buffer (oldest dropped). Replies (`response.output_audio.delta`)
// play through a small jitter buffer; on barge-in playback stops at once and the client sends
// `conversation.item.truncate` with the milliseconds actually played.
//
// Resume (voxgate.v1): the client keeps the latest resume token and counts the server frames it
// received (`voxgate.session.*` excluded). When the socket drops without a close frame (1006) it
// reconnects with `["voxgate.v1", "voxgate.resume"]` and no key, sends
// `voxgate.session.resume {resume_token, received_events}`, backing off (0, 250, 500 ms, 1 s, …)
// within the session's grace period, and applies the replayed events exactly like live ones.
// Mic audio captured meanwhile waits in a bounded ring (`gapAudioMs`, default 10 s, oldest
// dropped and counted) and goes out right after `voxgate.session.resumed`, before live audio;
// frames the browser had not yet put on the wire when the socket died (`bufferedAmount`) go
// first. A refused or expired resume falls back to a fresh session (new key, as a reconnect).
// Several nodes: `voxgate.session.migrate` (the node is draining) starts the same resume at once,
// through the same URL (the load balancer picks a live node, which takes the session over); the
// old socket is left open (closing it would end the session there) and nothing more is read from
// it; the old node closes it after the hand-off.
//
// HTTP fallback: when the WebSocket cannot open at all (a network or proxy that blocks
// WebSockets), the client switches by itself to voxgate's HTTP/SSE fallback (`SseSocket`,
// voxgate-sse.js) for that session and says so: `client.on("transport", ({ kind, reason }) => …)`
// with kind `websocket` or `sse`. The fallback resumes its own event stream after a drop
// (`Last-Event-ID`); if it cannot get through either, the next attempt tries the WebSocket first.
// `opts.transport: "sse"` starts on the fallback; `opts.fallback: false` never uses it.

import { SseSocket } from "./voxgate-sse.js";

const WIRE_RATE = 24000;
const FRAME_MS = 20;
const PREREADY_MAX_FRAMES = 150; // 3 s of audio kept while connecting
const MAX_BUFFERED_BYTES = 512 * 1024; // socket backlog beyond which mic frames are dropped
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000];
const RECONNECT_CLOSE_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
const TIMING_RING = 1000; // capture times of the last 20 s of sent frames (for latency)
const RESUME_DELAYS_MS = [0, 250, 500, 1000, 2000, 4000, 8000]; // the last one repeats
const RESUME_ATTEMPT_TIMEOUT_MS = 8000; // one resume connection: connect + first reply
const GAP_AUDIO_MS = 10000; // mic audio kept while resuming (default of opts.gapAudioMs)
const ACK_EVERY_MS = 1000; // voxgate.session.ack at most this far apart while events arrive
const ACK_EVERY_EVENTS = 200; // … or after this many events (a fast audio burst)
const SENT_TAIL_BYTES = MAX_BUFFERED_BYTES + 64 * 1024; // sent frames kept for re-sending
const SEEN_EVENT_IDS = 512; // event ids remembered to drop an event delivered twice
const STATE_HISTORY = 100;
const RESUME_SAMPLES = 20;
const GATEWAY_CONTROL = "voxgate.session."; // not counted in received_events

/** Words a user understands for things that go wrong. `code` is stable for code. */
export const PROBLEMS = {
  mic_denied: "Microphone access was blocked. Allow the microphone for this site (lock icon in the address bar), then press Start again.",
  no_mic: "No microphone was found. Plug one in or pick another input device, then press Start again.",
  mic_failed: "The microphone could not be opened. Close other apps using it and try again.",
  unreachable: "Cannot reach the voxgate server. Check that it is running and that you are online; Start again when it is back.",
  login_required: "You are not signed in. Open the console link printed by `voxgate serve` (each link works once).",
  key_expired: "The session key expired before the call started. Press Start to get a fresh one.",
  session_expired: "The server ended the session because it reached its maximum length. Press Start for a new one.",
  ended_by_server: "The server ended the session.",
  playback_blocked: "The browser is blocking sound. Click anywhere on the page to turn it on.",
  no_worklet: "This browser cannot process audio here (AudioWorklet needs https or localhost).",
  resume_failed: "The connection dropped and the call could not be resumed, so a new session was started. The assistant does not remember the earlier conversation.",
  upstream_lost: "voxgate lost its connection to the voice service and could not restore it.",
};

const REASON_WORDS = {
  session_expired: PROBLEMS.session_expired,
  invalid_api_key: "The server did not accept the session key. Press Start to get a fresh one.",
  rate_limit_exceeded: "The server is busy (rate limit). Wait a moment and press Start again.",
  insufficient_quota: "The upstream account is out of quota. Tell the person running voxgate.",
  too_many_sessions: "Too many sessions are open. Close another tab or wait, then press Start.",
};

function b64ToFloat32(b64) {
  const bin = atob(b64);
  const n = bin.length >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    if (v >= 0x8000) v -= 0x10000;
    out[i] = v / 0x8000;
  }
  return out;
}

function pcm16ToFloat32(buf) {
  const v = new Int16Array(buf);
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i] / 0x8000;
  return out;
}

/** Describe a close code/reason from the server in user words. */
export function describeClose(code, reason) {
  const key = (reason || "").split(".").pop();
  if (REASON_WORDS[key]) return REASON_WORDS[key];
  if (/expired/i.test(reason || "") && /key/i.test(reason || "")) return PROBLEMS.key_expired;
  const suffix = reason ? ` (${reason})` : ` (code ${code})`;
  return PROBLEMS.ended_by_server + suffix;
}

/** A gateway control event without its resume token (for logs and page handlers). */
function withoutToken(ev) {
  const { resume_token: token, ...rest } = ev;
  return token === undefined ? rest : { ...rest, resume_token: "(hidden)" };
}

function utf8Length(text) {
  let n = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) n += c >= 0x800 && (c < 0xd800 || c > 0xdfff) ? 2 : c < 0x800 ? 1 : 0;
  }
  return n;
}

export class VoxgateClient {
  /**
   * @param {object} opts
   * @param {() => Promise<string>} opts.getKey  returns a fresh `ek_` key (called per connect)
   * @param {string} [opts.url]  realtime WebSocket URL (default: this origin's /v1/realtime)
   * @param {object} [opts.session]  session.update payload to send once the session is ready
   * @param {boolean} [opts.handsFree=true]  false = push-to-talk (turn_detection null)
   * @param {object} [opts.audio]  getUserMedia audio constraints (echoCancellation, …)
   * @param {string} [opts.workletUrl]  URL of audio-worklets.js
   * @param {number} [opts.jitterMs=80]  audio queued before playback starts
   * @param {boolean} [opts.resume=true]  resume the session after a network drop (voxgate.v1)
   * @param {number} [opts.gapAudioMs=10000]  mic audio kept while resuming, re-sent after it
   */
  constructor(opts) {
    this.opts = { handsFree: true, jitterMs: 80, resume: true, gapAudioMs: GAP_AUDIO_MS, ...opts };
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = opts.url || `${proto}//${location.host}/v1/realtime`;
    this.transport = opts.transport || "websocket"; // websocket | sse (the HTTP fallback)
    this.fellBack = false; // on sse because the WebSocket could not open
    this.workletUrl = opts.workletUrl || new URL("./audio-worklets.js", import.meta.url).href;
    this.handlers = new Map();
    this.state = "closed";
    this.ws = null;
    this.ctx = null;
    this.stream = null;
    this.pending = []; // mic frames waiting for session.created
    this.upstream = "ok"; // ok | reconnecting | lost: voxgate's own link to the voice service
    this.resuming = null; // { dropAt, deadline, attempt, refused, … } while resuming
    this.resumeWs = null; // the connection of the current resume attempt
    this.gap = []; // [{ frame } | { text }]: what waits for voxgate.session.resumed, in order
    this.gapAudioFrames = 0;
    this.stats = { capturedFrames: 0, sentFrames: 0, sentBytes: 0, droppedFrames: 0, discardedFrames: 0,
                   playedSamples: 0, playedSumSq: 0, playedOutSamples: 0, playedPeak: 0,
                   truncates: [], bargeIns: 0, lastLatencyMs: null,
                   sessions: 0, resumes: 0, resumeAttempts: 0, resumeFailures: 0, lastResumeMs: null,
                   resumeMs: [], resumeLog: [], replayedEvents: 0, duplicateEvents: 0, gapFrames: 0,
                   gapResentFrames: 0, gapDroppedFrames: 0, tailResentFrames: 0, inFlightResentFrames: 0, acks: 0,
                   upstreamReconnects: 0, states: [], drops: [], migrations: 0, lostEvents: 0,
                   movedResumes: 0 };
    this.socketFrames = 0; // frames sent on the current socket
    this.resetSession();
  }

  // ---------------------------------------------------------------- events

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }

  emit(type, detail) {
    for (const fn of this.handlers.get(type) || []) {
      try { fn(detail); } catch (err) { console.error(err); }
    }
  }

  setState(state, reason = "") {
    this.state = state;
    const h = this.stats.states;
    h.push({ state, reason, at: Math.round(performance.now()) });
    if (h.length > STATE_HISTORY) h.shift();
    this.emit("state", { state, reason });
  }

  setUpstream(state, reason = "", detail = {}) {
    this.upstream = state;
    this.emit("upstream", { state, reason, ...detail });
  }

  problem(code, message) {
    this.emit("problem", { code, message: message || PROBLEMS[code] || code });
  }

  resetSession() {
    this.ready = false;
    this.received = 0; // server frames of this session received (voxgate.session.* excluded)
    this.lastAcked = 0; // last received count sent in voxgate.session.ack
    this.lastAckAt = 0;
    this.resumeToken = null; // the latest token; each resume hands out a new one
    this.graceMs = 0;
    this.sessionId = null;
    this.replayLeft = 0; // events still to come from the last resume's replay
    this.seenIds = new Set(); // recent event ids (an event delivered twice is dropped)
    this.seenOrder = [];
    this.sentTail = []; // recent sends [{ frame } | { text }, bytes], to re-send unsent ones
    this.sessionAudioBytes = 0; // binary audio sent in this session (voxgate counts the same)
    this.sentTailBytes = 0;
    this.responseActive = false;
    if (this.upstream !== "ok") this.setUpstream("ok");
    this.sentMs = 0; // audio appended to this session so far
    this.frameTimes = new Float64Array(TIMING_RING); // capture time per sent frame (ring)
    this.speechEndAt = null; // capture time of the end of the user's last turn
    this.playing = false; // audio queued or playing in the worklet
    this.audioItem = null; // assistant item whose audio is in the playback queue
    this.latencyPending = false;
  }

  // ---------------------------------------------------------------- lifecycle

  /** Open the mic, then connect. Resolves once connecting (not ready) or rejects nothing:
   * problems are reported as "problem" events and state "closed" with a reason. */
  async start() {
    if (this.state !== "closed") return;
    this.stopping = false;
    this.attempt = 0;
    this.setState("connecting", "opening the microphone");
    try {
      await this.openAudio();
    } catch (err) {
      const code = err.code || (err.name === "NotAllowedError" || err.name === "SecurityError"
        ? "mic_denied"
        : err.name === "NotFoundError" || err.name === "OverconstrainedError" ? "no_mic" : "mic_failed");
      this.problem(code);
      this.teardownAudio();
      this.setState("closed", code);
      return;
    }
    await this.connect();
  }

  stop(reason = "stopped") {
    this.stopping = true;
    this.ready = false;
    clearTimeout(this.retryTimer);
    this.clearPlayback("stop");
    if (this.ws) this.ws.close(1000, "client stop");
    this.ws = null;
    this.endResume();
    this.teardownAudio();
    this.stats.discardedFrames += this.pending.length + this.gapAudioFrames;
    this.pending = [];
    this.gap = [];
    this.gapAudioFrames = 0;
    this.setState("closed", reason);
  }

  async openAudio() {
    if (!window.AudioWorkletNode) throw Object.assign(new Error("no worklet"), { code: "no_worklet" });
    const audio = { channelCount: 1, echoCancellation: true, noiseSuppression: true,
                    autoGainControl: true, ...this.opts.audio };
    if (!navigator.mediaDevices?.getUserMedia) throw Object.assign(new Error(), { name: "NotFoundError" });
    this.stream = await navigator.mediaDevices.getUserMedia({ audio });
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    await this.ctx.audioWorklet.addModule(this.workletUrl);
    this.capture = new AudioWorkletNode(this.ctx, "voxgate-capture", { numberOfOutputs: 0 });
    this.capture.port.onmessage = (e) => this.onMicFrame(e.data);
    this.source = this.ctx.createMediaStreamSource(this.stream);
    this.source.connect(this.capture);
    this.player = new AudioWorkletNode(this.ctx, "voxgate-playback", {
      outputChannelCount: [1], processorOptions: { startMs: this.opts.jitterMs } });
    this.player.port.onmessage = (e) => this.onPlayer(e.data);
    this.player.connect(this.ctx.destination);
    await this.ensureSound();
  }

  /** Resume audio output; if the browser blocks it, say so and resume on the next click. */
  async ensureSound() {
    if (!this.ctx || this.ctx.state === "running") return true;
    try { await this.ctx.resume(); } catch { /* reported below */ }
    if (this.ctx.state === "running") return true;
    this.problem("playback_blocked");
    const unblock = async () => {
      if (!this.ctx) return;
      await this.ctx.resume();
      if (this.ctx.state === "running") {
        removeEventListener("pointerdown", unblock);
        removeEventListener("keydown", unblock);
        this.emit("problem", { code: "playback_ok", message: "" });
      }
    };
    addEventListener("pointerdown", unblock);
    addEventListener("keydown", unblock);
    return false;
  }

  teardownAudio() {
    this.source?.disconnect();
    this.capture?.disconnect();
    this.player?.disconnect();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.ctx?.close();
    this.ctx = this.stream = this.source = this.capture = this.player = null;
  }

  async connect() {
    this.resetSession();
    let key;
    try {
      key = await this.opts.getKey();
    } catch (err) {
      return this.onConnectFailed(err.code || "unreachable", err.message);
    }
    if (this.stopping) return;
    const ws = this.transport === "sse"
      ? new SseSocket(this.sseCreateUrl(), key)
      : new WebSocket(this.url, ["realtime", "voxgate.v1", `openai-insecure-api-key.${key}`]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.socketFrames = 0;
    ws.onmessage = (e) => this.ws === ws && this.onMessage(e.data);
    ws.onclose = (e) => this.ws === ws && this.onClose(e, ws);
    ws.onopen = () => {
      this.opened = true;
      if (this.ws === ws) this.emit("transport", { kind: this.transport, reason: this.fellBack
        ? "the WebSocket could not open; using the HTTP fallback" : "" });
    };
    this.opened = false;
    this.lastError = null;
  }

  /** The HTTP fallback's create URL: this client's realtime URL as http(s), path …/sse. */
  sseCreateUrl() {
    if (this.opts.sseUrl) return this.opts.sseUrl;
    const u = new URL(this.url.replace(/^ws/, "http"));
    u.pathname = u.pathname.replace(/\/?$/, "/sse");
    return u.href;
  }

  onConnectFailed(code, message) {
    if (code !== "unreachable" || this.attempt >= RECONNECT_DELAYS_MS.length) {
      this.problem(code, code === "login_required" ? undefined : message);
      this.stop(code);
      return;
    }
    this.scheduleReconnect(code);
  }

  scheduleReconnect(reason) {
    const delay = RECONNECT_DELAYS_MS[this.attempt++];
    this.setState("reconnecting", reason);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  onClose(e, ws) {
    this.ws = null;
    this.ready = false;
    if (this.stopping) return;
    if (this.canResume(e)) return this.beginResume(e, ws);
    this.clearPlayback("closed");
    const reason = e.reason || this.lastError?.code || "";
    if (!this.opened && this.transport === "websocket" && this.opts.fallback !== false
        && !this.lastError) {
      // The WebSocket never opened (blocked by the network?): try the HTTP fallback now.
      this.transport = "sse";
      this.fellBack = true;
      this.emit("transport", { kind: "sse", reason: "the WebSocket could not open; trying HTTP" });
      return this.connect();
    }
    if (!this.opened && this.fellBack) {
      this.transport = "websocket"; // neither got through: the next attempt tries both again
      this.fellBack = false;
    }
    if (!this.opened) {
      // Never got a socket: the server is down or unreachable.
      if (this.attempt < RECONNECT_DELAYS_MS.length) return this.scheduleReconnect("unreachable");
      this.problem("unreachable");
      return this.stop("unreachable");
    }
    const fatalReason = /session_expired|invalid_api_key|expired/.test(reason);
    if (RECONNECT_CLOSE_CODES.has(e.code) && !fatalReason && this.attempt < RECONNECT_DELAYS_MS.length) {
      return this.scheduleReconnect(`connection lost (${e.code}${e.reason ? " " + e.reason : ""})`);
    }
    if (/key has expired/i.test(this.lastError?.message || "")) {
      this.problem("key_expired");
    } else {
      this.problem(/session_expired/.test(reason) ? "session_expired" : "ended_by_server",
                   describeClose(e.code, reason || this.lastError?.message));
    }
    this.stop(reason || `closed (${e.code})`);
  }


  // ---------------------------------------------------------------- resume

  /** Only a drop without a close frame (1006) keeps the session; any close frame ends it. */
  canResume(e) {
    return this.opts.resume !== false && e.code === 1006 && !!this.resumeToken && this.graceMs > 0;
  }

  /** The node is going away: resume on another one now, leaving the old socket open. */
  migrate(ev) {
    if (this.opts.resume === false || !this.resumeToken || this.resuming || !this.ws) return;
    const old = this.ws;
    old.onmessage = null; // its remaining frames are replayed by the new node if we miss them
    old.onclose = null;
    this.ws = null;
    this.ready = false;
    this.stats.migrations++;
    const now = performance.now();
    // no requeueUnsent(): the old socket stays open, so what it still holds reaches the old node
    this.resuming = { dropAt: now, deadline: now + Math.max(this.graceMs, 10000), attempt: 0,
                      refused: false, lastWhy: "", timer: null, dropped: 0, migrating: true };
    this.setState("resuming", `migrating (${ev.reason || "node going away"})`);
    this.scheduleResume();
  }

  beginResume(e, ws) {
    const now = performance.now();
    const drops = this.stats.drops;
    drops.push({ code: e.code, bufferedAmount: ws ? ws.bufferedAmount : 0, frames: this.socketFrames });
    if (drops.length > RESUME_SAMPLES) drops.shift();
    this.resuming = { dropAt: now, deadline: now + this.graceMs, attempt: 0, refused: false,
                      lastWhy: "", timer: null, dropped: 0 };
    this.requeueUnsent(ws);
    this.setState("resuming", `code ${e.code}`);
    this.scheduleResume();
  }

  /** Sends the browser never put on the wire (still in `bufferedAmount`) go out again first. */
  requeueUnsent(ws) {
    let unsent = ws ? ws.bufferedAmount : 0;
    const back = [];
    while (unsent > 0 && this.sentTail.length) {
      const [item, bytes] = this.sentTail.pop();
      this.sentTailBytes -= bytes;
      unsent -= bytes;
      back.push(item);
      if (item.frame) {
        this.stats.sentFrames--;
        this.stats.sentBytes -= bytes;
        this.sessionAudioBytes -= bytes;
        this.sentMs -= FRAME_MS;
        this.stats.tailResentFrames++;
        this.gapAudioFrames++;
      }
    }
    this.gap = back.reverse().concat(this.gap);
  }

  /** Move the newest `bytes` of sent audio back to the front of the gap (to send again). */
  requeueFrames(bytes) {
    const back = [];
    while (bytes > 0 && this.sentTail.length) {
      const [item, size] = this.sentTail.pop();
      this.sentTailBytes -= size;
      if (!item.frame) continue; // a text event: voxgate's count is of audio only
      bytes -= size;
      back.push(item);
      this.stats.sentFrames--;
      this.stats.sentBytes -= size;
      this.sessionAudioBytes -= size;
      this.sentMs -= FRAME_MS;
      this.stats.inFlightResentFrames++;
      this.gapAudioFrames++;
    }
    this.gap = back.reverse().concat(this.gap);
  }

  scheduleResume() {
    const r = this.resuming;
    const delay = RESUME_DELAYS_MS[Math.min(r.attempt, RESUME_DELAYS_MS.length - 1)];
    if (r.attempt > 0 && performance.now() + delay > r.deadline) {
      return this.resumeFailed(`no answer within the ${Math.round(this.graceMs / 1000)} s grace period`
                               + (r.lastWhy ? ` (${r.lastWhy})` : ""));
    }
    r.attempt++;
    this.retryTimer = setTimeout(() => this.tryResume(), delay);
  }

  tryResume() {
    const r = this.resuming;
    if (!r || this.stopping) return;
    this.stats.resumeAttempts++;
    let ws;
    try {
      ws = new WebSocket(this.url, ["voxgate.v1", "voxgate.resume"]); // the token is the credential
    } catch (err) {
      r.lastWhy = err.message || "cannot connect";
      return this.scheduleResume();
    }
    ws.binaryType = "arraybuffer";
    this.resumeWs = ws;
    r.timer = setTimeout(() => {
      if (this.resumeWs !== ws) return;
      r.lastWhy = "timed out";
      ws.close();
    }, RESUME_ATTEMPT_TIMEOUT_MS);
    ws.onopen = () => {
      if (this.resumeWs !== ws) return;
      ws.send(JSON.stringify({ type: "voxgate.session.resume", resume_token: this.resumeToken,
                               received_events: this.received }));
      this.emit("sent", { type: "voxgate.session.resume", received_events: this.received });
    };
    ws.onmessage = (e) => {
      if (this.resumeWs === ws) this.onResumeReply(ws, e.data);
      else if (this.ws === ws) this.onMessage(e.data);
    };
    ws.onclose = (e) => {
      if (this.resumeWs === ws) this.onResumeClosed(ws, e);
      else if (this.ws === ws) this.onClose(e, ws);
    };
  }

  onResumeReply(ws, data) {
    const r = this.resuming;
    let ev;
    try {
      ev = typeof data === "string" ? JSON.parse(data) : { type: "(binary)" };
    } catch {
      ev = { type: "(not JSON)" };
    }
    if (ev.type === "voxgate.session.resumed") return this.resumed(ws, ev);
    this.emit("event", withoutToken(ev));
    r.refused = true; // a refusal (voxgate_resume_refused, then close 4000) or nonsense
    r.lastWhy = ev.error?.code || ev.type;
    if (ev.type !== "error") ws.close();
  }

  onResumeClosed(ws, e) {
    const r = this.resuming;
    clearTimeout(r.timer);
    this.resumeWs = null;
    if (this.stopping) return;
    if (r.refused || e.code === 4000) {
      return this.resumeFailed(`the server refused: ${r.lastWhy || e.reason || e.code}`);
    }
    r.lastWhy = r.lastWhy || `connection failed (${e.code})`;
    this.scheduleResume();
  }

  resumed(ws, ev) {
    const r = this.resuming;
    clearTimeout(r.timer);
    this.resumeWs = null;
    this.resuming = null;
    this.ws = ws;
    this.opened = true;
    this.socketFrames = 0;
    this.resumeToken = ev.resume_token; // the old one is dead now
    this.sessionId = ev.session_id || this.sessionId;
    this.replayLeft = ev.replayed_events | 0;
    this.stats.lostEvents += ev.lost_events | 0; // missed events the new node no longer had
    if (ev.moved) this.stats.movedResumes++; // the session came back on another node
    // Frames that left this page but never reached voxgate (in flight at the cut) go out
    // again first: voxgate says how much binary audio it received in this session.
    if (Number.isInteger(ev.input_audio_bytes) && ev.input_audio_bytes < this.sessionAudioBytes) {
      this.requeueFrames(this.sessionAudioBytes - ev.input_audio_bytes);
    }
    const ms = Math.round(performance.now() - r.dropAt);
    const s = this.stats;
    s.resumes++;
    s.lastResumeMs = ms;
    s.resumeMs.push(ms);
    s.resumeLog.push({ ms, attempts: r.attempt, replayed: this.replayLeft, gapFrames: this.gapAudioFrames });
    if (s.resumeMs.length > RESUME_SAMPLES) { s.resumeMs.shift(); s.resumeLog.shift(); }
    this.emit("event", withoutToken(ev));
    // What waited for the session, in order: unsent tail, gap audio, events sent meanwhile.
    this.ready = true;
    const gap = this.gap;
    const gapMs = this.gapAudioFrames * FRAME_MS;
    this.gap = [];
    this.gapAudioFrames = 0;
    for (const item of gap) {
      if (item.frame) {
        this.sendFrame(item.frame, true);
        s.gapResentFrames++;
      } else {
        this.sendText(item.text, item.event);
      }
    }
    this.setState("ready", "resumed");
    this.emit("resume", { outcome: "resumed", ms, attempts: r.attempt, replayed: this.replayLeft,
                          gapMs, droppedMs: r.dropped * FRAME_MS });
  }

  resumeFailed(why) {
    const r = this.resuming;
    this.endResume();
    this.stats.resumeFailures++;
    this.stats.discardedFrames += this.gapAudioFrames; // that audio belonged to the lost session
    this.gap = [];
    this.gapAudioFrames = 0;
    this.clearPlayback("closed");
    this.emit("resume", { outcome: "failed", why, ms: Math.round(performance.now() - r.dropAt),
                          attempts: r.attempt });
    this.problem("resume_failed", `${PROBLEMS.resume_failed} (${why})`);
    this.attempt = 0;
    this.setState("reconnecting", "starting a new session");
    this.connect();
  }

  endResume() {
    const r = this.resuming;
    if (r) clearTimeout(r.timer);
    this.resuming = null;
    const ws = this.resumeWs;
    this.resumeWs = null;
    if (ws) ws.close();
  }

  /** While resuming: keep mic audio (bounded, oldest dropped) and events, in order. */
  holdForResume(item) {
    this.gap.push(item);
    if (!item.frame) return;
    this.stats.gapFrames++;
    this.gapAudioFrames++;
    const max = Math.max(0, Math.round(this.opts.gapAudioMs / FRAME_MS));
    while (this.gapAudioFrames > max) {
      const i = this.gap.findIndex((x) => x.frame);
      this.gap.splice(i, 1);
      this.gapAudioFrames--;
      this.stats.gapDroppedFrames++;
      if (this.resuming) this.resuming.dropped++;
    }
  }

  rememberSent(item, bytes) {
    this.sentTail.push([item, bytes]);
    this.sentTailBytes += bytes;
    while (this.sentTailBytes > SENT_TAIL_BYTES && this.sentTail.length > 1) {
      this.sentTailBytes -= this.sentTail.shift()[1];
    }
  }

  // ---------------------------------------------------------------- sending

  send(event) {
    const text = JSON.stringify(event);
    if (this.resuming) {
      this.holdForResume({ text, event });
      return true;
    }
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.sendText(text, event);
    return true;
  }

  sendText(text, event) {
    this.ws.send(text);
    this.rememberSent({ text, event }, utf8Length(text));
    this.emit("sent", event);
  }

  /** Change session settings live (a `session.update` partial). */
  updateSession(session) {
    this.opts.session = { ...(this.opts.session || {}), ...session };
    if (this.ready) this.send({ type: "session.update", session: { type: "realtime", ...session } });
  }

  setHandsFree(on) {
    this.opts.handsFree = on;
  }

  onMicFrame({ pcm, rms }) {
    if (this.stopping) return; // a frame posted by the worklet before stop() took it down
    this.emit("level", { rms });
    const talking = this.opts.handsFree || this.pttActive;
    if (!talking) return;
    this.stats.capturedFrames++;
    const frame = { pcm, at: performance.now() - FRAME_MS };
    if (this.resuming) return this.holdForResume({ frame });
    if (!this.ready) {
      this.pending.push(frame);
      if (this.pending.length > PREREADY_MAX_FRAMES) { this.pending.shift(); this.stats.droppedFrames++; }
      return;
    }
    this.sendFrame(frame);
  }

  /** Send one mic frame; `held` frames (waited out a resume) pass the backlog check. */
  sendFrame(frame, held = false) {
    const { pcm, at } = frame;
    if (!held && this.ws.bufferedAmount > MAX_BUFFERED_BYTES) { this.stats.droppedFrames++; return; }
    this.ws.send(pcm);
    this.rememberSent({ frame }, pcm.byteLength);
    this.frameTimes[(this.sentMs / FRAME_MS) % TIMING_RING] = at + FRAME_MS;
    this.sentMs += FRAME_MS;
    this.stats.sentFrames++;
    this.socketFrames++;
    this.stats.sentBytes += pcm.byteLength;
    this.sessionAudioBytes += pcm.byteLength;
    if (this.pttActive) this.pttMs += FRAME_MS;
  }

  /** Capture time (performance.now) of the audio at `ms` into this session's input stream. */
  captureTimeOf(ms) {
    const idx = Math.floor(ms / FRAME_MS);
    if (idx < 0 || idx >= this.sentMs / FRAME_MS || this.sentMs / FRAME_MS - idx > TIMING_RING) return null;
    return this.frameTimes[idx % TIMING_RING] || null;
  }

  // push-to-talk ------------------------------------------------------------

  pttDown() {
    if (!(this.ready || this.resuming) || this.pttActive) return;
    if (this.playing) this.bargeIn("push-to-talk");
    if (this.responseActive) this.send({ type: "response.cancel" });
    this.send({ type: "input_audio_buffer.clear" });
    this.pttActive = true;
    this.pttMs = 0;
  }

  pttUp() {
    if (!this.pttActive) return;
    this.pttActive = false;
    if (this.pttMs < 100) {
      this.emit("notice", { message: "Hold the button while you speak (at least a moment)." });
      return;
    }
    this.send({ type: "input_audio_buffer.commit" });
    this.send({ type: "response.create" });
    this.speechEndAt = performance.now();
    this.latencyPending = true;
  }

  // ---------------------------------------------------------------- receiving

  onMessage(data) {
    if (typeof data !== "string") {
      // voxgate.v1 may carry output audio as raw PCM16 frames (numbered like any frame).
      this.countReceived();
      return this.enqueueAudio(this.audioItem || "binary", pcm16ToFloat32(data));
    }
    const ev = JSON.parse(data);
    if (typeof ev.type === "string" && ev.type.startsWith(GATEWAY_CONTROL)) {
      return this.onControl(ev);
    }
    this.countReceived();
    if (ev.event_id) {
      // Resume replays exactly what was missed; this only guards against a server bug.
      if (this.seenIds.has(ev.event_id)) { this.stats.duplicateEvents++; return; }
      this.seenIds.add(ev.event_id);
      this.seenOrder.push(ev.event_id);
      if (this.seenOrder.length > SEEN_EVENT_IDS) this.seenIds.delete(this.seenOrder.shift());
    }
    const handler = this.handlersByType[ev.type];
    if (handler) handler.call(this, ev);
    this.emit("event", ev);
  }

  countReceived() {
    this.received++;
    if (this.replayLeft > 0) { this.replayLeft--; this.stats.replayedEvents++; }
    // Tell voxgate what arrived (about once a second), so its replay log can let go of it.
    const now = performance.now();
    if (this.resumeToken && !this.resuming && this.ws && this.ws.readyState === WebSocket.OPEN
        && (now - this.lastAckAt >= ACK_EVERY_MS || this.received - this.lastAcked >= ACK_EVERY_EVENTS)) {
      this.ws.send(JSON.stringify({ type: "voxgate.session.ack", received_events: this.received }));
      this.lastAcked = this.received;
      this.lastAckAt = now;
      this.stats.acks++;
    }
  }

  /** `voxgate.session.*`: resume bookkeeping; never counted, the token is never emitted. */
  onControl(ev) {
    if (ev.type === "voxgate.session.migrate") {
      this.emit("event", withoutToken(ev));
      return this.migrate(ev);
    }
    if (ev.type === "voxgate.session.resumable") {
      this.resumeToken = ev.resume_token || null;
      this.graceMs = Math.max(0, Number(ev.grace_s) || 0) * 1000;
      this.sessionId = ev.session_id || null;
    }
    this.emit("event", withoutToken(ev));
  }

  handlersByType = {
    "session.created": function () {
      this.ready = true;
      this.attempt = 0;
      this.stats.sessions++;
      this.sessionAudioBytes = 0; // a new session: voxgate's count starts again too
      const s = this.opts.session;
      if (s) this.send({ type: "session.update", session: { type: "realtime", ...s } });
      const frames = this.pending;
      this.pending = [];
      for (const f of frames) this.sendFrame(f);
      this.setState("ready");
    },
    "input_audio_buffer.speech_started": function () {
      if (this.playing) this.bargeIn("speech");
    },
    "input_audio_buffer.speech_stopped": function (ev) {
      this.speechEndAt = this.captureTimeOf(ev.audio_end_ms) ?? performance.now();
      this.latencyPending = true;
    },
    "response.created": function () { this.responseActive = true; },
    "response.done": function () {
      this.responseActive = false;
      this.player?.port.postMessage({ type: "complete" });
    },
    "response.output_audio.delta": function (ev) {
      this.enqueueAudio(ev.item_id, b64ToFloat32(ev.delta));
    },
    "response.output_audio.done": function () { this.player?.port.postMessage({ type: "complete" }); },
    "conversation.item.input_audio_transcription.delta": function (ev) {
      this.emit("transcript", { role: "user", itemId: ev.item_id, text: ev.delta, final: false });
    },
    "conversation.item.input_audio_transcription.completed": function (ev) {
      this.emit("transcript", { role: "user", itemId: ev.item_id, text: ev.transcript, final: true });
    },
    "response.output_audio_transcript.delta": function (ev) {
      this.emit("transcript", { role: "assistant", itemId: ev.item_id, text: ev.delta, final: false });
    },
    "response.output_audio_transcript.done": function (ev) {
      this.emit("transcript", { role: "assistant", itemId: ev.item_id, text: ev.transcript, final: true });
    },
    "response.output_text.delta": function (ev) {
      this.emit("transcript", { role: "assistant", itemId: ev.item_id, text: ev.delta, final: false });
    },
    "response.output_text.done": function (ev) {
      this.emit("transcript", { role: "assistant", itemId: ev.item_id, text: ev.text, final: true });
    },
    "voxgate.upstream.reconnecting": function (ev) {
      this.stats.upstreamReconnects++;
      this.setUpstream("reconnecting", ev.reason || "");
    },
    "voxgate.upstream.reconnected": function (ev) {
      this.setUpstream("ok", "", { gapMs: ev.gap_ms, stateRestored: ev.state_restored,
                                   audioResentMs: ev.audio_resent_ms });
    },
    "voxgate.upstream.lost": function (ev) {
      this.setUpstream("lost", ev.reason || "");
    },
    "error": function (ev) {
      this.lastError = ev.error || {};
      const err = this.lastError;
      if (err.code === "response_cancel_not_active") return;
      const words = REASON_WORDS[err.code] || err.message || "The server reported an error.";
      this.emit("problem", { code: err.code || "server_error", message: words });
    },
  };

  // ---------------------------------------------------------------- playback

  enqueueAudio(item, samples) {
    if (!this.player || !samples.length) return;
    this.audioItem = item;
    this.playing = true;
    this.player.port.postMessage({ type: "audio", item, samples }, [samples.buffer]);
  }

  onPlayer(msg) {
    if (msg.type === "stats") {
      this.stats.playedSamples = msg.totalPlayed;
      this.stats.playedSumSq = msg.sumSq;
      this.stats.playedOutSamples = msg.outCount;
      this.stats.playedPeak = msg.peak;
    } else if (msg.type === "started") {
      if (this.latencyPending && this.speechEndAt != null) {
        const ms = Math.max(0, Math.round(performance.now() - this.speechEndAt));
        this.stats.lastLatencyMs = ms;
        this.emit("latency", { ms });
      }
      this.latencyPending = false;
    } else if (msg.type === "idle") {
      this.playing = false;
    } else if (msg.type === "cleared") {
      this.onCleared?.(msg);
    }
  }

  /** Stop playback now; resolves with what the worklet had played when it stopped. */
  clearPlayback(why) {
    this.playing = false;
    if (!this.player) return Promise.resolve(null);
    const id = Math.random().toString(36).slice(2);
    const done = new Promise((resolve) => {
      this.onCleared = (msg) => { if (msg.id === id) resolve(msg); };
    });
    this.player.port.postMessage({ type: "clear", id, why });
    return done;
  }

  /** The user talked over the assistant: stop at once and tell the server what was heard. */
  async bargeIn(why) {
    this.stats.bargeIns++;
    this.emit("bargein", { why });
    const res = await this.clearPlayback(why);
    if (!res || !res.hadAudio || !res.item || res.item === "binary") return;
    const audio_end_ms = Math.floor(res.played / (WIRE_RATE / 1000));
    const event = { type: "conversation.item.truncate", item_id: res.item, content_index: 0, audio_end_ms };
    this.stats.truncates.push({ item_id: res.item, audio_end_ms });
    this.send(event);
  }
}
