"""``voxgate serve`` raises glibc's fixed mmap threshold when the process runs Whisper
(runtime.py: CTranslate2 allocates 0.6-4 MB per decoding step)."""

from __future__ import annotations

import pytest

from voxgate.runtime import WHISPER_MMAP_THRESHOLD_BYTES, mmap_threshold_for


@pytest.mark.parametrize(
    ("runs_whisper", "threshold", "expected"),
    [
        (True, 512 * 1024, WHISPER_MMAP_THRESHOLD_BYTES),  # serve's default: raised
        (True, 0, 0),  # glibc's adaptive threshold is left alone
        (True, 16 * 1024 * 1024, 16 * 1024 * 1024),  # already high enough
        (False, 512 * 1024, 512 * 1024),  # a relay, or pocketsphinx: no CTranslate2
    ],
)
def test_whisper_raises_a_fixed_mmap_threshold(
    runs_whisper: bool, threshold: int, expected: int
) -> None:
    assert mmap_threshold_for(threshold, runs_whisper=runs_whisper) == expected
