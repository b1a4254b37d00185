// voxgate-webrtc.js — the WebRTC transport for voxgate's browser client (OpenAI Realtime, GA).
//
// Plain ES module, no build step. Same events and methods as VoxgateClient in
// voxgate-client.js (the WebSocket transport), so a page can switch between them:
//
//   import { VoxgateWebRTCClient } from "/console/static/voxgate-webrtc.js";
//   const client = new VoxgateWebRTCClient({ getKey: async () => "ek_…" });
//   client.on("state", ({ state, reason }) => …);  // connecting|ready|closed
//   client.on("transcript" | "level" | "latency" | "event" | "sent" | "problem" | "bargein", …);
//   await client.start();  …  client.stop();
//
// How it talks (as OpenAI's WebRTC API, realtime-protocol.md §2.3): the microphone is an audio
// track (Opus over RTP, the browser's own echo cancellation and jitter buffer), the assistant's
// voice arrives as the remote track and plays through an <audio> element, and events travel on
// the `oai-events` data channel. The SDP offer goes to `POST /v1/realtime/calls` with the `ek_`
// key; the answer comes back with `Location: …/calls/<call_id>`. The server owns playback, so
// barge-in needs nothing from the page: voxgate stops the audio, sends
// `output_audio_buffer.cleared` and truncates the item at what was sent. No resume: a dropped
// call ends (WebRTC rides out network changes itself with ICE).

import { PROBLEMS, describeClose } from "./voxgate-client.js";

const WIRE_RATE = 24000; // stats are kept in 24 kHz samples, like the WebSocket client's
const PTT_TAIL_MS = 250; // audio still in flight on RTP when the button is released

export class VoxgateWebRTCClient {
  /**
   * @param {object} opts
   * @param {() => Promise<string>} opts.getKey  returns a fresh `ek_` key
   * @param {string} [opts.url]  calls URL (default: this origin's /v1/realtime/calls)
   * @param {boolean} [opts.handsFree=true]  false = push-to-talk (turn_detection null)
   * @param {object} [opts.audio]  getUserMedia audio constraints (echoCancellation, …)
   * @param {string} [opts.meterUrl]  URL of webrtc-meter.js
   * @param {number} [opts.silenceMs=500]  the VAD silence window (for the latency figure)
   */
  constructor(opts) {
    this.opts = { handsFree: true, silenceMs: 500, ...opts };
    this.url = opts.url || `${location.origin}/v1/realtime/calls`;
    this.meterUrl = opts.meterUrl || new URL("./webrtc-meter.js", import.meta.url).href;
    this.transport = "webrtc";
    this.handlers = new Map();
    this.state = "closed";
    this.upstream = "ok";
    this.playing = false;
    this.sessionId = null;
    this.callId = null;
    this.pc = null;
    this.dc = null;
    this.stream = null;
    this.ctx = null;
    this.audioEl = null;
    this.speechStoppedAt = null; // performance.now() of the last speech_stopped
    this.stats = { sentFrames: 0, sentEvents: 0, playedSamples: 0, playedSumSq: 0,
                   playedOutSamples: 0, playedPeak: 0, truncates: [], bargeIns: 0,
                   lastLatencyMs: null, sessions: 0, states: [], cleared: [] };
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
    this.stats.states.push({ state, reason, at: Math.round(performance.now()) });
    if (this.stats.states.length > 100) this.stats.states.shift();
    this.emit("state", { state, reason });
  }

  problem(code, message) {
    this.emit("problem", { code, message: message || PROBLEMS[code] || code });
  }

  // ---------------------------------------------------------------- lifecycle

  async start() {
    this.stopping = false;
    this.setState("connecting", "opening the microphone");
    try {
      await this.openAudio();
    } catch (err) {
      const code = err.code || (err.name === "NotAllowedError" || err.name === "SecurityError"
        ? "mic_denied"
        : err.name === "NotFoundError" || err.name === "OverconstrainedError" ? "no_mic" : "mic_failed");
      this.problem(code);
      this.teardown();
      this.setState("closed", code);
      return;
    }
    await this.connect();
  }

  stop(reason = "stopped") {
    this.stopping = true;
    this.teardown();
    this.setState("closed", reason);
  }

  async openAudio() {
    const audio = { channelCount: 1, echoCancellation: true, noiseSuppression: true,
                    autoGainControl: true, ...this.opts.audio };
    if (!navigator.mediaDevices?.getUserMedia) throw Object.assign(new Error(), { name: "NotFoundError" });
    this.stream = await navigator.mediaDevices.getUserMedia({ audio });
    this.micTrack = this.stream.getAudioTracks()[0];
    this.micTrack.enabled = this.opts.handsFree;
    if (!window.AudioWorkletNode) return; // levels and stats need a worklet; the call does not
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    await this.ctx.audioWorklet.addModule(this.meterUrl);
    this.micMeter = new AudioWorkletNode(this.ctx, "voxgate-meter", { numberOfOutputs: 0 });
    this.micMeter.port.onmessage = (e) => this.emit("level", { rms: e.data.rms });
    this.ctx.createMediaStreamSource(this.stream).connect(this.micMeter);
    if (this.ctx.state !== "running") await this.ctx.resume().catch(() => {});
  }

  async connect() {
    let key;
    try {
      key = await this.opts.getKey();
    } catch (err) {
      this.problem(err.code || "unreachable", err.message);
      this.teardown();
      return this.setState("closed", err.code || "unreachable");
    }
    if (this.stopping) return;
    this.setState("connecting", "starting the call");
    const pc = new RTCPeerConnection();
    this.pc = pc;
    const dc = pc.createDataChannel("oai-events");
    this.dc = dc;
    dc.onmessage = (e) => this.dc === dc && this.onMessage(e.data);
    dc.onclose = () => this.dc === dc && this.ended("the call ended");
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "failed") this.ended("the connection failed", "unreachable");
    };
    pc.ontrack = (e) => this.onRemoteTrack(e.streams[0] || new MediaStream([e.track]));
    pc.addTrack(this.micTrack, this.stream);
    await pc.setLocalDescription(await pc.createOffer());
    let resp;
    try {
      resp = await fetch(this.url, {
        method: "POST",
        body: pc.localDescription.sdp,
        headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${key}` },
      });
    } catch {
      return this.failed("unreachable");
    }
    if (this.pc !== pc) return;
    if (resp.status !== 201) {
      const body = await resp.json().catch(() => ({}));
      const code = body.error?.code || "";
      return this.failed(resp.status === 401 ? "key_expired" : "ended_by_server",
                         describeClose(resp.status, code ? `invalid_request_error.${code}` : ""));
    }
    this.callId = (resp.headers.get("Location") || "").split("/").pop() || null;
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  }

  failed(code, message) {
    this.problem(code, message);
    this.teardown();
    this.setState("closed", code);
  }

  ended(why, code = null) {
    if (this.state === "closed") return;
    if (!this.stopping && code) this.problem(code);
    else if (!this.stopping && this.lastError) this.problem("ended_by_server", this.lastError);
    this.teardown();
    this.setState("closed", why);
  }

  teardown() {
    const { pc, dc } = this;
    this.pc = this.dc = null;
    try { dc?.close(); } catch { /* already closed */ }
    try { pc?.close(); } catch { /* already closed */ }
    this.stream?.getTracks().forEach((t) => t.stop());
    this.ctx?.close();
    if (this.audioEl) this.audioEl.srcObject = null;
    this.stream = this.ctx = this.micMeter = this.outMeter = null;
    this.playing = false;
  }

  onRemoteTrack(stream) {
    if (!this.audioEl) {
      this.audioEl = new Audio();
      this.audioEl.autoplay = true;
    }
    this.audioEl.srcObject = stream;
    this.audioEl.play().catch(() => this.problem("playback_blocked"));
    if (!this.ctx) return;
    this.outMeter = new AudioWorkletNode(this.ctx, "voxgate-meter", { numberOfOutputs: 0 });
    this.outMeter.port.onmessage = (e) => this.onPlayed(e.data);
    this.ctx.createMediaStreamSource(stream).connect(this.outMeter);
  }

  /** What the remote track carried in one 20 ms block: counted only when it is sound. */
  onPlayed({ rms, peak, samples, sumSq }) {
    if (peak < 0.01) return;
    const s = this.stats;
    const wire = Math.round(samples * WIRE_RATE / this.ctx.sampleRate);
    s.playedSamples += wire;
    s.playedOutSamples += samples;
    s.playedSumSq += sumSq;
    s.playedPeak = Math.max(s.playedPeak, peak);
    if (this.speechStoppedAt !== null) {
      const ms = Math.round(performance.now() - this.speechStoppedAt + this.opts.silenceMs);
      this.speechStoppedAt = null;
      s.lastLatencyMs = ms;
      this.emit("latency", { ms });
    }
  }

  // ---------------------------------------------------------------- events in and out

  send(event) {
    if (!this.dc || this.dc.readyState !== "open") return;
    this.dc.send(JSON.stringify(event));
    this.stats.sentEvents += 1;
    this.emit("sent", event);
  }

  updateSession(session) {
    this.send({ type: "session.update", session: { type: "realtime", ...session } });
  }

  setHandsFree(on) {
    this.opts.handsFree = on;
    if (this.micTrack) this.micTrack.enabled = on;
  }

  pttDown() {
    if (this.state !== "ready") return;
    this.send({ type: "input_audio_buffer.clear" });
    this.micTrack.enabled = true;
    this.pttAt = performance.now();
  }

  pttUp() {
    if (this.state !== "ready" || this.opts.handsFree) return;
    const held = performance.now() - (this.pttAt || 0);
    setTimeout(() => {
      if (this.micTrack) this.micTrack.enabled = false;
      if (held < 150) {
        this.emit("notice", { message: "Hold the button while you speak (at least a moment)." });
        return;
      }
      this.send({ type: "input_audio_buffer.commit" });
      this.send({ type: "response.create" });
    }, PTT_TAIL_MS);
  }

  onMessage(data) {
    let ev;
    try { ev = JSON.parse(data); } catch { return; }
    this.emit("event", ev);
    switch (ev.type) {
      case "session.created":
        this.sessionId = ev.session?.id || null;
        this.stats.sessions += 1;
        this.setState("ready");
        this.emit("transport", { kind: "webrtc", reason: "" });
        break;
      case "input_audio_buffer.speech_stopped":
        this.speechStoppedAt = performance.now();
        break;
      case "conversation.item.input_audio_transcription.delta":
        this.emit("transcript", { role: "user", itemId: ev.item_id, text: ev.delta, final: false });
        break;
      case "conversation.item.input_audio_transcription.completed":
        this.emit("transcript", { role: "user", itemId: ev.item_id, text: ev.transcript, final: true });
        break;
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta":
        this.emit("transcript", { role: "assistant", itemId: ev.item_id, text: ev.delta, final: false });
        break;
      case "response.output_audio_transcript.done":
        this.emit("transcript", { role: "assistant", itemId: ev.item_id, text: ev.transcript, final: true });
        break;
      case "response.output_text.done":
        this.emit("transcript", { role: "assistant", itemId: ev.item_id, text: ev.text, final: true });
        break;
      case "output_audio_buffer.started":
        this.playing = true;
        break;
      case "output_audio_buffer.stopped":
        this.playing = false;
        break;
      case "output_audio_buffer.cleared":
        this.playing = false;
        this.stats.bargeIns += 1;
        this.stats.cleared.push(ev.response_id);
        this.emit("bargein", { why: "speech" });
        break;
      case "conversation.item.truncated":
        this.stats.truncates.push({ item_id: ev.item_id, audio_end_ms: ev.audio_end_ms });
        break;
      case "error": {
        const err = ev.error || {};
        this.lastError = err.message || err.code || "error";
        this.emit("problem", { code: err.code || "server_error", message: err.message || String(err.code) });
        break;
      }
      default:
        break;
    }
  }
}
