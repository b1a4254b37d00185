// voxgate.js — voxgate's browser client, both transports from one module.
//
//   import { createClient } from "/console/static/voxgate.js";
//   const client = createClient({ transport: "webrtc", getKey });   // or "websocket" (default)
//
// VoxgateClient (voxgate-client.js) speaks the Realtime protocol over a WebSocket (binary mic
// frames, resume, HTTP fallback); VoxgateWebRTCClient (voxgate-webrtc.js) over WebRTC, as
// OpenAI's browser SDKs do. Both emit the same events and take the same options.

import { VoxgateClient } from "./voxgate-client.js";
import { VoxgateWebRTCClient } from "./voxgate-webrtc.js";

export { PROBLEMS, VoxgateClient, describeClose } from "./voxgate-client.js";
export { VoxgateWebRTCClient } from "./voxgate-webrtc.js";

/** A client for `opts.transport` ("websocket" or "webrtc"). */
export function createClient(opts) {
  return opts.transport === "webrtc" ? new VoxgateWebRTCClient(opts) : new VoxgateClient(opts);
}
