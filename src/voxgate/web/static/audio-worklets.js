// AudioWorklet processors for voxgate-client.js. Loaded with audioWorklet.addModule().
//
// voxgate-capture: mic -> PCM16 mono 24 kHz in 20 ms frames (480 samples), resampled from the
//   AudioContext rate (linear interpolation after a light low-pass), posted as ArrayBuffers
//   together with the frame's RMS level.
// voxgate-playback: a small jitter buffer of 24 kHz float chunks, each tagged with its item id.
//   It starts once `startMs` of audio is queued (or the response is complete), resamples to the
//   context rate, and reports what it actually played, per item, so the client can truncate
//   the conversation at the point the user heard.

const WIRE_RATE = 24000;
const FRAME_SAMPLES = 480; // 20 ms at 24 kHz

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / WIRE_RATE; // input samples per output sample
    this.pos = 0; // fractional read position into the current block
    this.prev = 0; // last input sample of the previous block (for interpolation)
    this.lp = 0; // one-pole low-pass state (anti-aliasing when downsampling)
    this.alpha = Math.min(1, (2 * Math.PI * 10000) / sampleRate);
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.fill = 0;
    this.sumSq = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    // Low-pass in place on a copy, keeping filter state across blocks.
    const x = new Float32Array(channel.length);
    let lp = this.lp;
    for (let i = 0; i < channel.length; i++) {
      lp += this.alpha * (channel[i] - lp);
      x[i] = lp;
    }
    this.lp = lp;
    // pos is relative to x[0]; index -1 is this.prev.
    while (this.pos < x.length - 1 + 1e-9) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = i < 0 ? this.prev : x[i];
      const b = i + 1 < x.length ? x[i + 1] : x[i];
      const s = Math.max(-1, Math.min(1, a + (b - a) * frac));
      this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      this.sumSq += s * s;
      if (this.fill === FRAME_SAMPLES) this.flush();
      this.pos += this.step;
    }
    this.pos -= x.length;
    this.prev = x[x.length - 1];
    return true;
  }

  flush() {
    const rms = Math.sqrt(this.sumSq / FRAME_SAMPLES);
    const buf = this.frame.buffer;
    this.port.postMessage({ pcm: buf, rms }, [buf]);
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.fill = 0;
    this.sumSq = 0;
  }
}

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.startSamples = Math.round(((opts.startMs ?? 80) * WIRE_RATE) / 1000);
    this.step = WIRE_RATE / sampleRate; // source samples per output sample
    this.queue = []; // [{ item, samples: Float32Array }]
    this.queued = 0; // source samples queued
    this.offset = 0; // fractional read position in queue[0]
    this.playing = false;
    this.complete = false; // no more audio expected for now: play out what is queued
    this.item = null; // item currently (or last) playing
    this.itemPlayed = 0; // source samples of `item` played
    this.totalPlayed = 0;
    this.sumSq = 0;
    this.outCount = 0; // output samples played (context rate)
    this.peak = 0;
    this.sinceReport = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "audio") {
      this.queue.push({ item: msg.item, samples: msg.samples });
      this.queued += msg.samples.length;
      this.complete = false;
    } else if (msg.type === "complete") {
      this.complete = true;
    } else if (msg.type === "clear") {
      // The interrupted item is the one at the head of the queue (maybe not started yet).
      const head = this.queue[0];
      const item = head ? head.item : this.item;
      const played = item === this.item ? this.itemPlayed : 0;
      const hadAudio = this.queued > 0;
      this.queue = [];
      this.queued = 0;
      this.offset = 0;
      this.playing = false;
      this.port.postMessage({ type: "cleared", id: msg.id, item, played, hadAudio });
      this.report(true);
    }
  }

  report(force) {
    if (!force && this.sinceReport < sampleRate / 20) return; // every 50 ms
    this.sinceReport = 0;
    this.port.postMessage({
      type: "stats",
      totalPlayed: this.totalPlayed,
      sumSq: this.sumSq,
      outCount: this.outCount,
      peak: this.peak,
      item: this.item,
      itemPlayed: this.itemPlayed,
      playing: this.playing,
      queued: this.queued,
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.queued > 0 && (this.queued >= this.startSamples || this.complete)) {
      this.playing = true;
      this.port.postMessage({ type: "started", item: this.queue[0].item });
    }
    let n = 0;
    if (this.playing) {
      while (n < out.length && this.queue.length) {
        const head = this.queue[0];
        if (head.item !== this.item) {
          this.item = head.item;
          this.itemPlayed = 0;
        }
        const i = Math.floor(this.offset);
        const a = head.samples[i];
        const b = i + 1 < head.samples.length ? head.samples[i + 1] : a;
        const s = a + (b - a) * (this.offset - i);
        out[n++] = s;
        this.sumSq += s * s;
        this.outCount++;
        if (Math.abs(s) > this.peak) this.peak = Math.abs(s);
        this.offset += this.step;
        this.itemPlayed += this.step;
        this.totalPlayed += this.step;
        if (this.offset >= head.samples.length) {
          this.offset -= head.samples.length;
          this.queued -= head.samples.length;
          this.queue.shift();
        }
      }
      if (!this.queue.length) {
        this.playing = false;
        this.offset = 0;
        this.port.postMessage({ type: "idle", item: this.item, played: this.itemPlayed });
        this.report(true);
      }
    }
    for (let k = n; k < out.length; k++) out[k] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    this.report(false);
    return true;
  }
}

registerProcessor("voxgate-capture", CaptureProcessor);
registerProcessor("voxgate-playback", PlaybackProcessor);
