// voxgate-client.js — a small browser client for voxgate (OpenAI Realtime protocol, GA shape).
//
// Plain ES module, no build step. Usage:
//
//   import { VoxgateClient } from "/console/static/voxgate-client.js";
//   const client = new VoxgateClient({ getKey: async () => "ek_…" });
//   client.on("state", ({ state, reason }) => …);        // connecting|ready|reconnecting|closed
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

const WIRE_RATE = 24000;
const FRAME_MS = 20;
const PREREADY_MAX_FRAMES = 150; // 3 s of audio kept while connecting
const MAX_BUFFERED_BYTES = 512 * 1024; // socket backlog beyond which mic frames are dropped
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000];
const RECONNECT_CLOSE_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
const TIMING_RING = 1000; // capture times of the last 20 s of sent frames (for latency)

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
   */
  constructor(opts) {
    this.opts = { handsFree: true, jitterMs: 80, ...opts };
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = opts.url || `${proto}//${location.host}/v1/realtime`;
    this.workletUrl = opts.workletUrl || new URL("./audio-worklets.js", import.meta.url).href;
    this.handlers = new Map();
    this.state = "closed";
    this.ws = null;
    this.ctx = null;
    this.stream = null;
    this.pending = []; // mic frames waiting for session.created
    this.stats = { sentFrames: 0, droppedFrames: 0, playedSamples: 0, playedSumSq: 0, playedOutSamples: 0,
                   playedPeak: 0, truncates: [], bargeIns: 0, lastLatencyMs: null };
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
    this.emit("state", { state, reason });
  }

  problem(code, message) {
    this.emit("problem", { code, message: message || PROBLEMS[code] || code });
  }

  resetSession() {
    this.ready = false;
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
    clearTimeout(this.retryTimer);
    this.clearPlayback("stop");
    if (this.ws) this.ws.close(1000, "client stop");
    this.ws = null;
    this.teardownAudio();
    this.pending = [];
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
    const ws = new WebSocket(this.url, ["realtime", "voxgate.v1", `openai-insecure-api-key.${key}`]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (e) => this.ws === ws && this.onMessage(e.data);
    ws.onclose = (e) => this.ws === ws && this.onClose(e);
    ws.onopen = () => { this.opened = true; };
    this.opened = false;
    this.lastError = null;
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

  onClose(e) {
    this.ws = null;
    this.ready = false;
    this.clearPlayback("closed");
    if (this.stopping) return;
    const reason = e.reason || this.lastError?.code || "";
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

  // ---------------------------------------------------------------- sending

  send(event) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(event));
    this.emit("sent", event);
    return true;
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
    this.emit("level", { rms });
    const talking = this.opts.handsFree || this.pttActive;
    if (!talking) return;
    const frame = { pcm, at: performance.now() - FRAME_MS };
    if (!this.ready) {
      this.pending.push(frame);
      if (this.pending.length > PREREADY_MAX_FRAMES) { this.pending.shift(); this.stats.droppedFrames++; }
      return;
    }
    this.sendFrame(frame);
  }

  sendFrame({ pcm, at }) {
    if (this.ws.bufferedAmount > MAX_BUFFERED_BYTES) { this.stats.droppedFrames++; return; }
    this.ws.send(pcm);
    this.frameTimes[(this.sentMs / FRAME_MS) % TIMING_RING] = at + FRAME_MS;
    this.sentMs += FRAME_MS;
    this.stats.sentFrames++;
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
    if (!this.ready || this.pttActive) return;
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
      // voxgate.v1 may carry output audio as raw PCM16 frames.
      return this.enqueueAudio(this.audioItem || "binary", pcm16ToFloat32(data));
    }
    const ev = JSON.parse(data);
    const handler = this.handlersByType[ev.type];
    if (handler) handler.call(this, ev);
    this.emit("event", ev);
  }

  handlersByType = {
    "session.created": function () {
      this.ready = true;
      this.attempt = 0;
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
