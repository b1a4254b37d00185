// voxgate-sse.js — voxgate's HTTP/SSE fallback, behind a WebSocket-like face.
//
// For networks that block WebSockets. `SseSocket` speaks voxgate's HTTP fallback
// (POST /v1/realtime/sse, GET …/events as Server-Sent Events, POST …/send and …/audio, DELETE)
// and looks enough like a `WebSocket` (readyState, bufferedAmount, send, close, onopen,
// onmessage, onclose) for `VoxgateClient` to use it in its place.
//
// * Events come from `fetch()` reading `text/event-stream` (not EventSource: it cannot send
//   the Authorization header). Every event id is remembered; when the stream drops, it is
//   opened again with `Last-Event-ID`, so voxgate replays exactly what was missed (its replay
//   log). That happens inside this object: the page sees no close, only a `streamResumes` count.
// * Client events and mic audio are queued in order and POSTed one request at a time; what
//   piles up while a request is in flight goes in the next one (events as one JSON array,
//   consecutive audio frames as one body). Each request carries `X-Voxgate-Batch: n`; a request
//   whose answer was lost is sent again with the same n, and voxgate does not apply it twice.
// * About once a second it tells voxgate what arrived (`voxgate.session.ack`), so the
//   replay log can let go of it.

const RETRY_DELAYS_MS = [0, 250, 500, 1000, 2000, 4000]; // the last one repeats
const GIVE_UP_MS = 30000; // a stream or a POST that cannot get through for this long: closed
const ACK_EVERY_MS = 1000;

export class SseSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  /**
   * @param {string} createUrl  e.g. `https://host/v1/realtime/sse?model=gpt-realtime`
   * @param {string} key  a server key or `ek_` key (only for the create call)
   */
  constructor(createUrl, key) {
    this.readyState = SseSocket.CONNECTING;
    this.bufferedAmount = 0;
    this.binaryType = "arraybuffer";
    this.onopen = this.onmessage = this.onclose = null;
    this.queue = []; // [{ kind: "events", items: [text] } | { kind: "audio", items: [ArrayBuffer] }]
    this.batch = 0;
    this.posting = false;
    this.lastEventId = 0;
    this.ackedId = 0;
    this.lastAckAt = 0;
    this.stats = { streamResumes: 0, posts: 0, postRetries: 0, eventIds: [], heartbeats: 0 };
    this.abort = new AbortController();
    this.open(createUrl, key);
  }

  async open(createUrl, key) {
    let r;
    try {
      r = await fetch(createUrl, { method: "POST", headers: { Authorization: `Bearer ${key}` },
                                   signal: this.abort.signal });
    } catch {
      return this.finish(1006, "");
    }
    if (r.status !== 201) {
      const body = await r.json().catch(() => ({}));
      const code = body.error?.code || `http_${r.status}`;
      this.errorText = JSON.stringify({ type: "error", event_id: `event_http_${r.status}`,
                                        error: { type: "invalid_request_error", ...body.error } });
      return this.finish(r.status === 401 ? 3000 : 4000, `invalid_request_error.${code}`);
    }
    const s = await r.json();
    const base = new URL(createUrl);
    this.urls = { events: new URL(s.events, base), send: new URL(s.send, base),
                  audio: new URL(s.audio, base), session: new URL(`${base.pathname}/${s.id}`, base) };
    this.token = s.token;
    this.stream();
  }

  // ---------------------------------------------------------------- receiving

  async stream() {
    let attempt = 0;
    let since = performance.now();
    while (this.readyState < SseSocket.CLOSING) {
      const headers = { Authorization: `Bearer ${this.token}` };
      if (this.lastEventId) headers["Last-Event-ID"] = String(this.lastEventId);
      let r = null;
      try {
        r = await fetch(this.urls.events, { headers, signal: this.abort.signal, cache: "no-store" });
      } catch { /* the network: try again below */ }
      if (r && r.ok) {
        if (this.readyState === SseSocket.CONNECTING) {
          this.readyState = SseSocket.OPEN;
          this.onopen?.({});
        } else {
          this.stats.streamResumes++;
        }
        attempt = 0;
        const closed = await this.read(r.body.getReader());
        if (closed) return;
        since = performance.now(); // dropped without a close event: resume from lastEventId
      } else if (r && r.status >= 400 && r.status < 500 && r.status !== 408 && r.status !== 429) {
        return this.finish(1006, ""); // the session is gone (refused resume, ended): a new one
      }
      if (performance.now() - since > GIVE_UP_MS) return this.finish(1006, "");
      await sleep(RETRY_DELAYS_MS[Math.min(attempt++, RETRY_DELAYS_MS.length - 1)]);
    }
  }

  /** Read one stream to its end; true when the session ended (a close event). */
  async read(reader) {
    const decoder = new TextDecoder();
    let buf = "";
    let ev = { id: null, event: "message", data: [] };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (ev.data.length && this.dispatch(ev)) return true;
            ev = { id: null, event: "message", data: [] };
          } else if (line.startsWith(":")) {
            this.stats.heartbeats++;
          } else {
            const i = line.indexOf(":");
            const name = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (name === "id") ev.id = Number(val);
            else if (name === "event") ev.event = val;
            else if (name === "data") ev.data.push(val);
          }
        }
      }
    } catch {
      return this.readyState >= SseSocket.CLOSING;
    }
  }

  /** One complete SSE event; true when it ended the session. */
  dispatch(ev) {
    const data = ev.data.join("\n");
    if (ev.event === "close") {
      const { code, reason } = JSON.parse(data);
      this.finish(code, reason || "");
      return true;
    }
    if (ev.id !== null) {
      if (ev.id <= this.lastEventId) return false; // never twice (a replay starts after it)
      this.lastEventId = ev.id;
      this.stats.eventIds.push(ev.id);
    }
    this.onmessage?.({ data });
    const now = performance.now();
    if (now - this.lastAckAt >= ACK_EVERY_MS && this.lastEventId > this.ackedId) {
      this.ackedId = this.lastEventId;
      this.lastAckAt = now;
      this.enqueue("events", JSON.stringify({ type: "voxgate.session.ack",
                                              received_events: this.lastEventId }), 0);
    }
    return false;
  }

  // ---------------------------------------------------------------- sending

  send(data) {
    if (this.readyState !== SseSocket.OPEN) throw new Error("SseSocket is not open");
    if (typeof data === "string") this.enqueue("events", data, data.length);
    else this.enqueue("audio", data instanceof ArrayBuffer ? data : data.buffer, data.byteLength);
  }

  enqueue(kind, item, bytes) {
    const last = this.queue[this.queue.length - 1];
    if (last && last.kind === kind && !last.sending) last.items.push(item);
    else this.queue.push({ kind, items: [item] });
    this.bufferedAmount += bytes;
    if (!this.posting) this.post();
  }

  async post() {
    this.posting = true;
    while (this.queue.length && this.readyState <= SseSocket.OPEN) {
      const next = this.queue[0];
      next.sending = true;
      next.batch ??= ++this.batch;
      const audio = next.kind === "audio";
      const body = audio ? concat(next.items) : `[${next.items.join(",")}]`;
      const ok = await this.postOnce(audio ? this.urls.audio : this.urls.send, body, next.batch,
                                     audio ? "application/octet-stream" : "application/json");
      if (!ok) break;
      this.queue.shift();
      this.bufferedAmount -= audio ? body.byteLength : next.items.reduce((n, t) => n + t.length, 0);
      if (this.bufferedAmount < 0) this.bufferedAmount = 0;
    }
    this.posting = false;
  }

  /** POST one batch until it is taken (retrying the same batch number); false: give up. */
  async postOnce(url, body, batch, type) {
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      if (this.readyState > SseSocket.OPEN) return false;
      try {
        const r = await fetch(url, { method: "POST", body, signal: this.abort.signal,
          headers: { Authorization: `Bearer ${this.token}`, "Content-Type": type,
                     "X-Voxgate-Batch": String(batch) } });
        this.stats.posts++;
        if (r.ok) return true;
        if (r.status === 410 || r.status === 404 || r.status === 401) return false;
      } catch { /* lost on the way (or its answer was): the same batch again */ }
      this.stats.postRetries++;
      if (performance.now() - started > GIVE_UP_MS) { this.finish(1006, ""); return false; }
      await sleep(RETRY_DELAYS_MS[Math.min(attempt, RETRY_DELAYS_MS.length - 1)]);
    }
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= SseSocket.CLOSING) return;
    const wasOpen = this.urls && this.token;
    this.readyState = SseSocket.CLOSING;
    if (wasOpen) {
      fetch(this.urls.session, { method: "DELETE", headers: { Authorization: `Bearer ${this.token}` },
                                 keepalive: true }).catch(() => {});
    }
    this.finish(code, reason);
  }

  finish(code, reason) {
    if (this.readyState === SseSocket.CLOSED) return;
    if (this.errorText && this.readyState === SseSocket.CONNECTING) {
      this.readyState = SseSocket.OPEN; // a refusal reads like the WebSocket's: open, error, close
      this.onopen?.({});
      this.onmessage?.({ data: this.errorText });
    }
    this.readyState = SseSocket.CLOSED;
    this.abort.abort();
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function concat(buffers) {
  const total = buffers.reduce((n, b) => n + b.byteLength, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const b of buffers) { out.set(new Uint8Array(b), at); at += b.byteLength; }
  return out;
}
