"""Media transports: calls whose audio voxgate plays itself (WebRTC, phone media streams).

A WebSocket client plays the assistant's audio and tells the server where it stopped
(``conversation.item.truncate``, realtime-protocol.md §6.4). Over WebRTC and phone lines the
server owns playback instead: voxgate paces the audio to the caller, knows what was heard, and
on barge-in stops playback and truncates the assistant's item there itself. Each call is one
:class:`~voxgate.session.ports.ClientConnection` adapter handed to the session hub like any
WebSocket client, so keys, limits, recovery and logs are the same.

* :mod:`.ledger` and :mod:`.core` are sans-I/O: what was heard, and what an event means for
  the call (forward it, play it, cut playback, inject a truncate);
* :mod:`.call` is the shared adapter half (inbox, sidebands, executing the core's actions);
* :mod:`.webrtc`, :mod:`.webrtc_audio`, :mod:`.webrtc_endpoint`: ``POST /v1/realtime/calls``
  with aiortc; :mod:`.sideband`: a server WebSocket attached to a call by ``?call_id=``;
* :mod:`.phone`, :mod:`.phone_endpoint`: Twilio Media Streams (μ-law passed through).
"""
