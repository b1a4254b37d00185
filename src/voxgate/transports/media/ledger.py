"""What the caller has heard of each assistant audio item, for barge-in (§6.4, §9).

A media call plays the assistant's audio itself, so it, not the client, knows where playback
stopped. The ledger is told what audio was *queued* for the caller per item (when a delta
arrives) and what was *heard* (a WebRTC frame left the track, a phone mark came back), and
answers the barge-in question: is anything still playing, and if it is cut now, at which
millisecond of which item? It also tracks each response's ``output_audio_buffer.*`` life
(started on its first audio, stopped once drained after ``response.done``, cleared when cut).

Pure: no I/O, no clock; milliseconds are of the item's own audio. Bounded: at most
``max_items`` items and ``max_cleared`` cleared response ids are remembered.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final

#: Audio shorter than this left unplayed does not count as "still playing" (rounding).
_EPSILON_MS: Final = 0.5


@dataclass(slots=True)
class _Item:
    response_id: str
    queued_ms: float = 0.0
    heard_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Cut:
    """Playback was stopped inside ``item_id`` after ``audio_end_ms`` of its audio."""

    item_id: str
    response_id: str
    audio_end_ms: int


class PlaybackLedger:
    """See the module docstring."""

    def __init__(self, *, max_items: int = 64, max_cleared: int = 16) -> None:
        #: the session's ``turn_detection.interrupt_response`` (speech cuts playback)
        self.interrupt = True
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._max_items = max_items
        self._cleared: deque[str] = deque(maxlen=max_cleared)
        self._started: dict[str, bool] = {}  # response id -> response.done seen

    # ------------------------------------------------------------------ queries

    @property
    def playing(self) -> bool:
        """Whether some queued audio has not been heard yet."""
        return any(i.queued_ms - i.heard_ms > _EPSILON_MS for i in self._items.values())

    def is_cleared(self, response_id: str) -> bool:
        """Whether this response's playback was cut (its late audio must not play)."""
        return response_id in self._cleared

    def heard_ms(self, item_id: str) -> float:
        item = self._items.get(item_id)
        return item.heard_ms if item is not None else 0.0

    # ------------------------------------------------------------------ updates

    def queued(self, response_id: str, item_id: str, ms: float) -> bool:
        """``ms`` more audio of ``item_id`` is on its way to the caller.

        Returns True when this is the response's first audio (``output_audio_buffer.started``).
        """
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _Item(response_id)
            self._trim()
        item.queued_ms += ms
        if response_id in self._started:
            return False
        self._started[response_id] = False
        return True

    def heard(self, item_id: str, ms: float) -> None:
        """The caller heard ``ms`` more of ``item_id`` (capped at what was queued)."""
        item = self._items.get(item_id)
        if item is not None:
            item.heard_ms = min(item.queued_ms, item.heard_ms + ms)

    def heard_until(self, item_id: str, end_ms: float) -> None:
        """The caller has heard ``item_id`` up to ``end_ms`` (a phone mark came back)."""
        item = self._items.get(item_id)
        if item is not None:
            item.heard_ms = min(item.queued_ms, max(item.heard_ms, end_ms))

    def response_done(self, response_id: str) -> list[str]:
        """``response.done``: the responses whose buffer is now fully drained (stopped)."""
        if response_id in self._started:
            self._started[response_id] = True
        return self.drained()

    def drained(self, *, settle: bool = False) -> list[str]:
        """Responses that are done and fully heard: each gets one ``stopped``, then is forgotten.

        ``settle``: playback ran dry, so everything queued has been heard (what a resampler's
        filter still held is a millisecond or two; it must not look like audio still playing).
        """
        if settle:
            for item in self._items.values():
                item.heard_ms = item.queued_ms
        done = [
            rid for rid, finished in self._started.items() if finished and not self._unheard(rid)
        ]
        for rid in done:
            del self._started[rid]
        return done

    def cut(self) -> Cut | None:
        """Stop playback now: the cut point, or None if nothing was playing.

        Everything queued is dropped; responses that were playing are marked cleared (their
        late audio is discarded) and forgotten for ``started``/``stopped``.
        """
        first: tuple[str, _Item] | None = None
        for item_id, item in self._items.items():
            if item.queued_ms - item.heard_ms > _EPSILON_MS:
                first = (item_id, item)
                break
        if first is None:
            return None
        item_id, item = first
        playing = {i.response_id for i in self._items.values() if i.queued_ms > i.heard_ms}
        for rid in playing | set(self._started):
            if rid not in self._cleared:
                self._cleared.append(rid)
        self._started.clear()
        for other in self._items.values():
            other.queued_ms = other.heard_ms
        return Cut(item_id, item.response_id, int(item.heard_ms))

    # ------------------------------------------------------------------ internals

    def _unheard(self, response_id: str) -> bool:
        return any(
            i.response_id == response_id and i.queued_ms - i.heard_ms > _EPSILON_MS
            for i in self._items.values()
        )

    def _trim(self) -> None:
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)
