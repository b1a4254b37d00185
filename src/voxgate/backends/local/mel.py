"""Whisper's log-mel features in numpy (no torch, no librosa, no PyAV).

Owns: :func:`log_mel`, 16 kHz mono float samples → the ``[80, frames]`` log-mel spectrogram
Whisper models take (25 ms Hann window, 10 ms hop, Slaney mel scale and area normalisation,
log10 clipped 8 decades under the peak, scaled to about [-1, 1]), computed exactly as
OpenAI's ``whisper.audio.log_mel_spectrogram`` does but over the audio given, not padded to
30 s. The filter bank is built once per :class:`MelFeatures` (it is 64 KB).

Threading: pure functions over arrays; the projection onto the filter bank uses
``np.einsum`` without BLAS, so no OpenBLAS thread pool spins up beside the engine's workers.
Must not: read files or keep state between calls.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

SAMPLE_RATE_HZ: Final = 16_000
N_FFT: Final = 400
HOP: Final = 160
N_MELS: Final = 80
#: Encoder frames are pairs of mel frames: a window must have an even number of them.
FRAMES_PER_S: Final = SAMPLE_RATE_HZ // HOP

Float32Array = npt.NDArray[np.float32]


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa ``htk=False``)."""
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_mel + np.log(np.maximum(hz, 1e-10) / 1000.0) / logstep
    out: npt.NDArray[np.float64] = np.where(hz >= 1000.0, log, linear)
    return out


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    out: npt.NDArray[np.float64] = np.where(
        mel >= min_log_mel, 1000.0 * np.exp(logstep * (mel - min_log_mel)), f_sp * mel
    )
    return out


def mel_filters(n_mels: int = N_MELS) -> Float32Array:
    """The ``[n_mels, N_FFT // 2 + 1]`` filter bank, as ``librosa.filters.mel(16000, 400)``."""
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE_HZ)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE_HZ / 2)), n_mels + 2)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


class MelFeatures:
    """Computes Whisper log-mel features; immutable after construction (share freely)."""

    def __init__(self, n_mels: int = N_MELS) -> None:
        self.n_mels = n_mels
        self._filters = mel_filters(n_mels)
        n = np.arange(N_FFT)
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)

    def log_mel(self, samples: Float32Array) -> Float32Array:
        """``[n_mels, frames]`` features of ``samples`` (16 kHz, float in [-1, 1]).

        ``frames`` is even (the encoder halves it) and at least 2.
        """
        if len(samples) < N_FFT:
            samples = np.pad(samples, (0, N_FFT - len(samples)))
        padded = np.pad(samples, N_FFT // 2, mode="reflect")
        count = 1 + (len(padded) - N_FFT) // HOP
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count]
        power = np.abs(np.fft.rfft(frames * self._window, axis=1)) ** 2
        power = power[:-1].astype(np.float32)  # Whisper drops the last STFT frame
        mel = np.einsum("mf,tf->mt", self._filters, power, optimize=False)
        log = np.log10(np.maximum(mel, 1e-10))
        log = np.maximum(log, log.max() - 8.0)
        feats = ((log + 4.0) / 4.0).astype(np.float32)
        usable = feats.shape[1] - feats.shape[1] % 2
        return np.ascontiguousarray(feats[:, : max(usable, 2)])
