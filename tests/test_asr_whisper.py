"""backends/local/whisper*.py: the default recogniser on real and synthesised speech.

Real model, real audio: espeak-ng voices generated here (tests/speech_sets.py), their 8 kHz
μ-law copies, and human recordings from Debian packages (scripts/system-deps installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from speech_sets import (
    CONSOLE_QUESTIONS,
    ESPEAK_VOICES,
    EXPECTED_ENTRY,
    Clip,
    asterisk_set,
    espeak_clip,
    espeak_trading_set,
    missing_packages,
    pocketsphinx_set,
    ulaw_copy,
    wer,
)
from voxgate.backends.local.asr import DecodeAbandoned, Transcript
from voxgate.backends.local.responder import KnowledgeResponder
from voxgate.backends.local.whisper import (
    BUNDLED_SHA256,
    WhisperModelError,
    bundled_model_path,
    cut_repetition,
    read_model_files,
)
from voxgate.backends.local.whisper_stream import WhisperRecognizer, float_to_pcm16, pcm16_to_float
from voxgate.tools.knowledge import KnowledgeBase, asr_phrases

pytestmark = pytest.mark.timeout(300)

KB = KnowledgeBase.example()
needs_debian_speech = pytest.mark.skipif(
    bool(missing_packages()), reason=f"not installed: {missing_packages()} (scripts/system-deps)"
)


@pytest.fixture(scope="module")
def asr() -> Iterator[WhisperRecognizer]:
    recognizer = WhisperRecognizer(workers=1, prompt_words=asr_phrases(KB.entries))
    yield recognizer
    recognizer.close()


def recognise(asr: WhisperRecognizer, clip: Clip, *, pad_ms: int = 300) -> str:
    """Feed ``clip`` in 20 ms chunks with silence around it, as a session would."""
    pad = b"\0\0" * (clip.rate_hz * pad_ms // 1000)
    pcm = pad + clip.pcm16 + pad
    stream = asr.stream(input_rate_hz=clip.rate_hz)
    step = clip.rate_hz * 2 // 50
    for i in range(0, len(pcm), step):
        stream.feed(pcm[i : i + step])
    return stream.finish().text


# --------------------------------------------------------------------------- understanding


def test_console_questions_reach_their_entries_in_eight_voices(asr: WhisperRecognizer) -> None:
    """The console's three example questions, 8 espeak voices/speeds/pitches (24 questions)."""
    responder = KnowledgeResponder(KB)
    kinds = []
    for voice in ESPEAK_VOICES:
        for question in CONSOLE_QUESTIONS:
            heard = recognise(asr, espeak_clip(question, voice))
            verdict = responder.judge(heard)
            # never another entry read out (the bug of issue 13)
            assert verdict.kind != "answer" or verdict.heading == EXPECTED_ENTRY[question], heard
            offered = EXPECTED_ENTRY[question] in verdict.candidates
            kinds.append(verdict.kind if offered else "missed")
    # measured: 16 answered, 7 "did you mean" naming the entry, 1 missed (coral says "size
    # a position" too fast for tiny.en)
    assert kinds.count("answer") >= 11, kinds
    assert kinds.count("missed") <= 3, kinds


def test_espeak_trading_set_word_error_rate(asr: WhisperRecognizer) -> None:
    clips = espeak_trading_set()
    pairs = [(c.reference, recognise(asr, c)) for c in clips]
    # measured 0.10-0.13 across runs (espeak-ng is not bit-exact); pocketsphinx: 0.59
    assert wer(pairs) <= 0.16


@needs_debian_speech
def test_real_speech_word_error_rate(asr: WhisperRecognizer) -> None:
    clips = asterisk_set(60) + pocketsphinx_set()
    assert len(clips) == 71
    pairs = [(c.reference, recognise(asr, c)) for c in clips]
    assert wer(pairs) <= 0.065  # measured 0.049-0.052; pocketsphinx 0.26


@needs_debian_speech
def test_phone_audio_in_ulaw_is_recognised_as_well_as_pcm(asr: WhisperRecognizer) -> None:
    clips = asterisk_set(30)
    pcm = wer((c.reference, recognise(asr, c)) for c in clips)
    ulaw = wer((c.reference, recognise(asr, ulaw_copy(c))) for c in clips)
    assert ulaw <= 0.08
    assert ulaw <= pcm + 0.03


def test_console_question_over_ulaw_finds_its_entry(asr: WhisperRecognizer) -> None:
    responder = KnowledgeResponder(KB)
    clip = ulaw_copy(espeak_clip("What is a stop loss order?", ESPEAK_VOICES[0]))
    assert clip.rate_hz == 8000
    heard = recognise(asr, clip)
    assert responder.judge(heard).heading == "Stop loss order", heard


# --------------------------------------------------------------------------- no words


def _noise(kind: str, seconds: float, level_db: float, seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    t = np.arange(n) / 16_000
    x = {
        "white": rng.normal(0, 1, n),
        "brown": np.cumsum(rng.normal(0, 1, n)),
        "clicks": np.where(rng.random(n) < 0.003, 1.0, 0.0),
        "hum": np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 150 * t),
        "cough": rng.normal(0, 1, n) * np.exp(-t * 9),
    }[kind]
    x = x - x.mean()
    x = x / np.sqrt(np.mean(x**2)) * 10 ** (level_db / 20)
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("kind", ["white", "brown", "clicks", "hum", "cough"])
@pytest.mark.parametrize("level_db", [-30, -20])
def test_noise_gives_no_words(asr: WhisperRecognizer, kind: str, level_db: int) -> None:
    clip = Clip(kind, "", _noise(kind, 1.2, level_db), 16_000)
    assert recognise(asr, clip) == ""
    assert asr.model.loaded  # it was decoded, not only gated by energy


def test_the_no_speech_probe_runs_only_for_unlikely_decodes(asr: WhisperRecognizer) -> None:
    # a clear question is likely enough to be speech without the probe's decoder step
    stream = asr.stream(input_rate_hz=24_000)
    stream.feed(espeak_clip("What is a limit order?", ESPEAK_VOICES[0]).pcm16)
    assert stream.finish().text.lower().startswith("what is a limit order")
    assert stream.last is not None
    assert stream.last.no_speech_prob is None
    assert stream.last.avg_logprob >= asr.model.options.probe_below_logprob
    # noise decodes to something unlikely: probed, and the probe says it is not speech
    stream = asr.stream()
    stream.feed(_noise("hum", 1.2, -20))
    assert stream.finish().text == ""
    assert stream.last is not None
    assert stream.last.no_speech_prob is not None
    assert stream.last.avg_logprob < asr.model.options.probe_below_logprob


def test_a_decode_no_longer_wanted_stops_between_its_stages(asr: WhisperRecognizer) -> None:
    samples = pcm16_to_float(
        espeak_clip("What is a limit order?", ESPEAK_VOICES[0], rate_hz=16_000).pcm16
    )
    asked: list[int] = []

    def wanted() -> bool:
        asked.append(1)
        return len(asked) < 2  # yes before the encoder, no before the decoder

    with pytest.raises(DecodeAbandoned):
        asr.model.recognize(samples, wanted=wanted)
    assert len(asked) == 2
    stream = asr.stream()
    stream.feed(float_to_pcm16(samples))
    job = stream.begin_snapshot()
    job.abandon()
    with pytest.raises(DecodeAbandoned):
        job.run()


def test_silence_and_a_quiet_line_are_not_even_decoded(asr: WhisperRecognizer) -> None:
    stream = asr.stream()
    stream.feed(b"\0\0" * 16_000)
    stream.feed(_noise("white", 1.0, -60))
    assert stream.finish() == Transcript("", True, 2000.0)
    assert stream.last is None


def test_short_replies_are_words_not_noise(asr: WhisperRecognizer) -> None:
    heard = [recognise(asr, espeak_clip(w, ESPEAK_VOICES[1])) for w in ("Yes.", "No.", "Stop.")]
    assert [h.lower().strip(".,!? ") for h in heard] == ["yes", "no", "stop"]


# --------------------------------------------------------------------------- decoding


def test_a_looping_decoder_is_cut_at_the_first_repeat() -> None:
    assert cut_repetition("What is a limit order? What is a limit order?", truncated=False) == (
        "What is a limit order?"
    )
    assert cut_repetition("Yes, Yes, Yes, Yes,", truncated=True) == "Yes"
    assert cut_repetition("What is a limit order, what", truncated=True) == "What is a limit order"
    assert cut_repetition("I think I think so", truncated=False) == "I think I think so"


def test_partials_are_prefixes_of_the_final() -> None:
    asr = WhisperRecognizer(workers=1, partial_interval_ms=300)
    try:
        clip = espeak_clip(
            "How do I move my stop to break even? Tell me about scaling out.", ESPEAK_VOICES[0]
        )
        stream = asr.stream(input_rate_hz=clip.rate_hz)
        step = clip.rate_hz * 2 // 50
        partials = [
            p.text
            for i in range(0, len(clip.pcm16), step)
            if (p := stream.feed(clip.pcm16[i : i + step])) is not None
        ]
        final = stream.finish().text
    finally:
        asr.close()
    assert partials
    for earlier, later in zip(partials, [*partials[1:], final], strict=True):
        assert later.startswith(earlier), (earlier, later)


def test_a_snapshot_at_a_pause_is_the_final_when_no_audio_follows(
    asr: WhisperRecognizer,
) -> None:
    clip = espeak_clip("What is a margin call?", ESPEAK_VOICES[0])
    stream = asr.stream(input_rate_hz=clip.rate_hz)
    stream.feed(clip.pcm16)
    paused = stream.snapshot()
    first = stream.last
    final = stream.finish()
    assert final.text == paused.text
    assert stream.last is first  # no second decode


# --------------------------------------------------------------------------- the model


def test_the_bundled_model_is_pinned_by_hash(tmp_path: Path) -> None:
    bundled = bundled_model_path()
    for name in BUNDLED_SHA256:
        (tmp_path / name).symlink_to(bundled / name)
    assert set(read_model_files(tmp_path, BUNDLED_SHA256)) == set(BUNDLED_SHA256)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_bytes((bundled / "config.json").read_bytes() + b" ")
    with pytest.raises(WhisperModelError, match=r"config\.json"):
        read_model_files(tmp_path, BUNDLED_SHA256)


def test_a_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    asr = WhisperRecognizer(tmp_path / "nowhere")
    with pytest.raises(WhisperModelError, match="missing"):
        asr.warm(b"\0\0" * 1600)


def test_a_model_folder_setting_is_used_instead_of_the_wheel(
    tmp_path: Path, asr: WhisperRecognizer
) -> None:
    folder = tmp_path / "my-model"
    shutil.copytree(bundled_model_path(), folder, copy_function=os.symlink)
    own = WhisperRecognizer(folder)
    try:
        clip = espeak_clip("What is a margin call?", ESPEAK_VOICES[0])
        assert "margin call" in recognise(own, clip).lower()
    finally:
        own.close()


def test_nothing_is_fetched_from_the_network(tmp_path: Path) -> None:
    """Load and run the recogniser in a process whose sockets all fail (no hub, no DNS)."""
    guard = tmp_path / "sitecustomize.py"
    guard.write_text(
        textwrap.dedent(
            """
            import socket
            attempts = []
            def _refuse(*args, **kwargs):
                attempts.append(args)
                raise OSError("network access attempted: " + repr(args)[:200])
            socket.socket.connect = _refuse
            socket.socket.connect_ex = _refuse
            socket.create_connection = _refuse
            socket.getaddrinfo = _refuse
            """
        )
    )
    script = textwrap.dedent(
        """
        import socket
        import sys
        assert socket.getaddrinfo.__name__ == "_refuse", "the socket guard is not installed"
        sys.path.insert(0, sys.argv[1])
        from speech_sets import ESPEAK_VOICES, espeak_clip
        from voxgate.backends.local.asr import make_recognizer
        from voxgate.backends.local.tts import get_tts
        from voxgate.tools.knowledge import KnowledgeBase, asr_phrases
        phrases = asr_phrases(KnowledgeBase.example().entries)
        asr = make_recognizer("whisper", workers=1, prompt_words=phrases)
        asr.warm(get_tts().synthesize_pcm16("Hello there.", rate=16000))
        clip = espeak_clip("What is a stop loss order?", ESPEAK_VOICES[0])
        stream = asr.stream(input_rate_hz=clip.rate_hz)
        stream.feed(clip.pcm16)
        print("HEARD:" + stream.finish().text)
        """
    )
    env = {
        k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "HF_HOME"
    }
    env.update(PYTHONPATH=str(tmp_path), HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(  # noqa: S603 (our interpreter, our script)
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "network access attempted" not in proc.stdout + proc.stderr
    heard = next(line for line in proc.stdout.splitlines() if line.startswith("HEARD:"))
    # the words, not Whisper's punctuation (under load it once wrote "a stop. Loss order.")
    assert "stop loss" in re.sub(r"[^a-z ]", "", heard.lower())
    assert not (tmp_path / "hf").exists()  # no hub cache was even created
