"""LocalBackend.from_settings raises glibc's fixed mmap threshold for Whisper (backend.py)."""

from __future__ import annotations

import pytest

from voxgate.backends.local import backend as local_backend
from voxgate.backends.local.backend import WHISPER_MMAP_THRESHOLD_BYTES, LocalBackend
from voxgate.config import Settings


@pytest.mark.parametrize(
    ("asr", "threshold", "expected"),
    [
        ("whisper", 512 * 1024, [WHISPER_MMAP_THRESHOLD_BYTES]),  # serve's default: raised
        ("whisper", 0, []),  # glibc's adaptive threshold is left alone
        ("whisper", 16 * 1024 * 1024, []),  # already high enough
        ("pocketsphinx", 512 * 1024, []),  # no CTranslate2 in the process
    ],
)
def test_whisper_raises_a_fixed_mmap_threshold(
    monkeypatch: pytest.MonkeyPatch, asr: str, threshold: int, expected: list[int]
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(local_backend, "fix_mmap_threshold", lambda b: calls.append(b) or True)
    settings = Settings(backend="local", asr=asr, malloc_mmap_threshold_bytes=threshold)
    backend = LocalBackend.from_settings(settings)
    try:
        assert calls == expected
    finally:
        backend.resources.close()
