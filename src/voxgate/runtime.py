"""Process-wide tuning ``voxgate serve`` applies once at start (never per session).

glibc raises its mmap threshold each time a large mmapped block is freed, so after a while
every transient socket buffer (asyncio reads 256 KiB at a time) comes from the heap; the small
long-lived buffers of many streaming sessions then pin those pages, and resident memory grows
well past what the sessions hold. Fixing the threshold (``M_MMAP_THRESHOLD``,
``VOXGATE_MALLOC_MMAP_THRESHOLD_BYTES``, default 512 KiB) stops that drift. It sits above
asyncio's 256 KiB read buffer on purpose: at 128 KiB every socket read became its own
mmap/munmap and page faults (1.2-1.7 minor faults per relayed frame, measured), while 512 KiB
kept faults at the default allocator's rate and resident memory lower than either. Elsewhere
than glibc this does nothing.

A process that runs Whisper (the local engine's default recogniser) needs more: CTranslate2
allocates and frees 0.6-4 MB buffers at every decoding step (beam-reordered caches); above
the threshold each is an mmap/munmap whose pages fault in afresh. At 512 KiB the decode
thread spent 20-37 % of its time in the kernel and a pause-time decode took ~2x as long as
in a plain process, so :func:`mmap_threshold_for` raises a fixed threshold to
:data:`WHISPER_MMAP_THRESHOLD_BYTES` there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Final

_M_MMAP_THRESHOLD = -3
#: The glibc mmap threshold a process running Whisper needs at least (see the module doc).
WHISPER_MMAP_THRESHOLD_BYTES: Final = 8 * 1024 * 1024


def mmap_threshold_for(threshold_bytes: int, *, runs_whisper: bool) -> int:
    """The threshold to fix for a process: the setting, raised for Whisper (0, glibc's own
    adaptive threshold, is left as it is)."""
    if runs_whisper and 0 < threshold_bytes < WHISPER_MMAP_THRESHOLD_BYTES:
        return WHISPER_MMAP_THRESHOLD_BYTES
    return threshold_bytes


def fix_mmap_threshold(threshold_bytes: int) -> bool:
    """Fix glibc's mmap threshold; True if applied (0 leaves the allocator alone)."""
    if threshold_bytes <= 0 or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
