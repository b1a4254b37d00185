"""The ``local`` backend: the offline engine behind the same interface as ``openai``.

Owns: :class:`LocalBackend`, built from :class:`~voxgate.config.Settings`
(:meth:`LocalBackend.from_settings`), which picks the responder (knowledge base by default,
an OpenAI-compatible chat-completions server when ``local_llm_url`` is set) and the speech
recogniser (``VOXGATE_ASR``: Whisper by default, prompted with the knowledge base's headings;
pocketsphinx), shares its worker threads, recogniser and TTS between its sessions, warms them
in the background at startup so the first turn is fast, and opens one in-process
:class:`~.connection.LocalConnection` per client session. It owns the worker threads and the
recogniser's model and releases them in :meth:`LocalBackend.aclose`.

Must not: download anything, or keep per-session state here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import structlog

from voxgate.backends.base import UpstreamConnection, UpstreamTarget
from voxgate.backends.local.asr import (
    ASR_RATE_HZ,
    AsrKind,
    FinalDecode,
    Recognizer,
    make_recognizer,
)
from voxgate.backends.local.connection import LocalConnection
from voxgate.backends.local.engine import (
    EngineLimits,
    EngineResources,
    EngineSession,
    engine_workers,
)
from voxgate.backends.local.responder import (
    ChatCompletionsResponder,
    KnowledgeResponder,
    Responder,
)
from voxgate.backends.local.tts import SpeechCache, Synthesizer, get_tts
from voxgate.backends.local.vad import VadStream
from voxgate.config import Settings
from voxgate.protocol import ids
from voxgate.protocol.session_config import (
    SessionType,
    bytes_per_ms,
    default_session,
    input_format,
)
from voxgate.tools.knowledge import KnowledgeBase, KnowledgeLibrary, asr_phrases

log = structlog.get_logger(__name__)

DEFAULT_ASR_DECODERS: Final = 4
_WARM_UP_TEXT: Final = "How do I place a limit order on a stock? What is a margin call?"


class LocalBackend:
    """Serves realtime sessions from the local engine (VAD → ASR → responder → TTS).

    Args:
        responder: what the assistant says (:mod:`.responder`).
        responder_name: shown by ``/readyz``.
        asr: the speech recogniser (the backend owns and closes it); default made from
            ``asr_kind``, ``asr_model_path``, ``asr_decoders`` and ``asr_partial_ms``.
        asr_kind: ``whisper`` (default) or ``pocketsphinx``.
        asr_model_path: a CTranslate2 Whisper folder instead of the bundled tiny.en.
        asr_prompt: phrases Whisper is prompted with; default: the knowledge base's
            headings and ``Asked:`` questions when the responder answers from one.
        asr_decoders: pocketsphinx decoder pool size (users mid-utterance at once).
        asr_partial_ms: Whisper partial transcripts every this much speech (0 = none).
        final_decode: ``stream`` or ``batch`` final transcripts (pocketsphinx).
        limits: per-session limits and timeouts.
        warm: load the models in the background now, not on the first turn.
        workers: engine worker threads (default one per usable core).
        tts: returns the synthesiser (``synthesize(text, fmt=, voice=, speed=)`` → wire
            bytes); default espeak-ng. Everything the engine says goes through it.
    """

    name = "local"
    #: sessions live in this process: there is no upstream to reconnect to
    reconnectable = False

    def __init__(
        self,
        *,
        responder: Responder,
        responder_name: str = "custom",
        asr: Recognizer | None = None,
        asr_kind: AsrKind = "whisper",
        asr_model_path: str | None = None,
        asr_prompt: Sequence[str] | None = None,
        asr_decoders: int = DEFAULT_ASR_DECODERS,
        asr_partial_ms: int = 0,
        final_decode: FinalDecode = "stream",
        limits: EngineLimits | None = None,
        warm: bool = True,
        workers: int | None = None,
        tts: Callable[[], Synthesizer] = get_tts,
    ) -> None:
        self._responder_name = responder_name
        threads = workers or engine_workers()
        if asr is None:
            if asr_prompt is None and isinstance(responder, KnowledgeResponder):
                asr_prompt = asr_phrases(responder.knowledge.entries)
            asr = make_recognizer(
                asr_kind,
                workers=threads,
                model_path=asr_model_path,
                prompt_words=asr_prompt or (),
                decoders=asr_decoders,
                partial_interval_ms=asr_partial_ms,
            )
        # Whisper decodes are bounded by CTranslate2's own pool (``threads`` at once, one core
        # each), so the engine's threads can outnumber the cores: VAD and TTS of other
        # sessions go on while a ~100 ms decode runs, instead of queueing behind it.
        # pocketsphinx holds the GIL while it decodes: one thread per core there.
        pool = threads if asr.name == "pocketsphinx" else max(4, threads * 4)
        self.resources = EngineResources(
            executor=ThreadPoolExecutor(max_workers=pool, thread_name_prefix="voxgate-engine"),
            asr=asr,
            responder=responder,
            final_decode=final_decode,
            limits=limits or EngineLimits(),
            speech_cache=SpeechCache(tts),
        )
        self._closed = False
        self._warm: Future[None] | None = None
        if warm:
            self._warm = self.resources.executor.submit(_warm_up, self.resources)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        knowledge: KnowledgeLibrary | None = None,
        vocabulary: Sequence[str] = (),
    ) -> LocalBackend:
        """The backend ``voxgate serve`` uses: responder and knowledge from ``settings``.

        ``knowledge``: the notes the app's ``search_knowledge`` tool reads (shared, so both
        see the same reloads); default: ``knowledge_path`` or the shipped example.
        ``vocabulary``: more words for the recogniser's prompt (the server tools' names and
        the names their parameters accept, e.g. the symbols a trading tool knows).
        """
        responder: Responder
        llm = ChatCompletionsResponder.from_settings(settings)
        if llm is not None:
            responder = llm
            name = "chat_completions"
        else:
            kb: KnowledgeBase | KnowledgeLibrary = knowledge or (
                KnowledgeBase.from_folder(settings.knowledge_path)
                if settings.knowledge_path
                else KnowledgeBase.example()
            )
            responder = KnowledgeResponder(kb)
            name = "knowledge"
        final: FinalDecode = settings.local_asr_final
        prompt = None
        if vocabulary and isinstance(responder, KnowledgeResponder):
            prompt = asr_phrases(responder.knowledge.entries) + list(vocabulary)
        return cls(
            responder=responder,
            responder_name=name,
            asr_prompt=prompt,
            asr_kind=settings.asr,
            asr_model_path=settings.local_asr_model_path,
            asr_decoders=settings.local_asr_decoders,
            asr_partial_ms=settings.local_asr_partial_ms,
            final_decode=final,
        )

    async def connect(self, target: UpstreamTarget) -> UpstreamConnection:
        session_type: SessionType = (
            "transcription" if target.intent == "transcription" and not target.model else "realtime"
        )
        session = default_session(
            session_type,
            session_id=ids.session_id(),
            model=target.model or "gpt-realtime",
            now_s=int(time.time()),
        )
        max_turn_bytes = int(
            self.resources.limits.max_turn_s * 1000 * bytes_per_ms(input_format(session))
        )
        core = EngineSession(session, max_buffer_bytes=max_turn_bytes)
        return LocalConnection(core, self.resources, session_id=target.session_id)

    async def wait_warm(self) -> None:
        """Wait until the background warm-up finished (tests and benchmarks)."""
        if self._warm is not None:
            await asyncio.wrap_future(self._warm)

    async def aclose(self) -> None:
        """Stop the worker threads and free the recogniser's model (sessions are gone by
        now: the app drains them first). The espeak-ng library stays loaded: it is global
        state of the process (:func:`~.tts.get_tts`)."""
        if self._closed:
            return
        self._closed = True
        if self._warm is not None:
            self._warm.cancel()
        await asyncio.to_thread(self.resources.close)

    async def probe(self) -> str | None:
        """``llm_unreachable`` when the configured chat-completions server does not answer
        (``/readyz``); None otherwise (the knowledge responder needs no network)."""
        from voxgate.backends.probe import models_url, probe_http

        responder = self.resources.responder
        if not isinstance(responder, ChatCompletionsResponder):
            return None
        return await probe_http(models_url(responder.url))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "responder": self._responder_name,
            "asr": self.resources.asr.name,
            "warm": bool(self._warm is not None and self._warm.done()),
        }


def _warm_up(resources: EngineResources) -> None:
    """Load the models once, in a worker thread, so the first turn does not pay for it."""
    started = time.perf_counter()
    try:
        # espeak-ng's own voice warms the recogniser (and adapts pocketsphinx's cepstral
        # mean), whatever TTS answers users
        speech = get_tts().synthesize_pcm16(_WARM_UP_TEXT, rate=ASR_RATE_HZ, speed=0.8)
        resources.speech_cache.synthesize("Hello.", fmt="audio/pcm", voice="alloy", speed=1.0)
        VadStream()
        resources.asr.warm(speech)
    except Exception as exc:  # warming is an optimisation; sessions report real failures
        log.warning("local_engine.warm_failed", error=type(exc).__name__)
        return
    log.info("local_engine.warm", elapsed_ms=round((time.perf_counter() - started) * 1000))
