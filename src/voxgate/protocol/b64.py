"""Base64 for audio on the hot path: SIMD-accelerated (``pybase64``) with the stdlib behind it.

Every ``input_audio_buffer.append`` carries ~1.3 KB of base64 that voxgate decodes once into its
session mirror, and every binary frame of raw audio is encoded once for an OpenAI upstream.
CPython's ``binascii`` spends ~24 instructions per character on that (counted with callgrind:
a fifth of voxgate's user-space instructions per relayed frame); ``pybase64`` does the same
strict decoding about seven times faster. Both raise ``binascii.Error`` (a ``ValueError``) on
anything that is not canonical, padded base64.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from types import ModuleType

_fast: ModuleType | None
try:
    import pybase64 as _fast
except ImportError:  # pragma: no cover - a trimmed install: correct, just slower
    _fast = None


def _std_decode(text: str | bytes) -> bytes:
    return binascii.a2b_base64(text, strict_mode=True)


def _std_encode(data: bytes | bytearray | memoryview) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


#: pybase64's decoder (None without it), for a hot caller that passes ``(text, None, True)``
#: itself: :func:`decode` is exactly that call
pybase64_decode: Callable[[str | bytes, None, bool], bytes] | None = (
    _fast.b64decode if _fast is not None else None
)

if _fast is not None:
    _fast_decode = _fast.b64decode

    def decode(text: str | bytes) -> bytes:
        """Strict decode: canonical padded base64 only (raises ``binascii.Error``/
        ``ValueError``). Arguments by position: pybase64 parses keywords with
        ``PyArg_ParseTupleAndKeywords``, ~1,800 instructions per call (a third of the call,
        more than this frame costs)."""
        return _fast_decode(text, None, True)  # type: ignore[no-any-return]

else:  # pragma: no cover - a trimmed install
    decode = _std_decode
#: Encode to an ASCII ``str``.
encode: Callable[[bytes | bytearray | memoryview], str] = (
    _fast.b64encode_as_string if _fast is not None else _std_encode
)
