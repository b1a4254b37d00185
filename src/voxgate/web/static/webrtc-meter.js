// AudioWorklet processor for voxgate-webrtc.js. Loaded with audioWorklet.addModule().
//
// voxgate-meter: measures whatever is connected to it (the microphone, or the assistant's
// remote WebRTC track) in 20 ms blocks and posts {rms, peak, samples, sumSq} for each; it
// outputs nothing (playback is the <audio> element's).

class MeterProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.round(sampleRate / 50);
    this.samples = 0;
    this.sumSq = 0;
    this.peak = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const v = channel[i];
      this.sumSq += v * v;
      const a = v < 0 ? -v : v;
      if (a > this.peak) this.peak = a;
    }
    this.samples += channel.length;
    if (this.samples >= this.block) {
      const rms = Math.sqrt(this.sumSq / this.samples);
      this.port.postMessage({ rms, peak: this.peak, samples: this.samples, sumSq: this.sumSq });
      this.samples = 0;
      this.sumSq = 0;
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("voxgate-meter", MeterProcessor);
