"""The knowledge base: Markdown notes parsed into entries and a small lexical retriever.

Owns: parsing a folder of Markdown files (one ``## Heading`` per entry, the text under it is
the entry's body), and :meth:`KnowledgeBase.search`, a dependency-free BM25 ranker that is
forgiving of speech-recognition errors. A query term matches a note term exactly, by the
same phonetic key ("laws" ~ "loss") or by character-trigram overlap ("lost" ~ "loss"); such
soft matches count as fractional term frequencies. Heading terms weigh more than body terms.
Scores are normalised against an ideal heading hit for every query term, so a threshold can
reject questions the notes do not cover ("what's the weather on mars").

Must not: do I/O after construction, log per query, or keep mutable state shared between
instances. A :class:`KnowledgeBase` is immutable once built, so sessions and worker threads
may share one instance.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

DEFAULT_MIN_SCORE: Final = 0.3
"""Normalised score under which a hit is dropped (calibrated on the example notes)."""

_HEADING_WEIGHT: Final = 3.0
_BODY_WEIGHT: Final = 0.5
_KNOWN_WORD_SOFT_FACTOR: Final = 0.5
_K1: Final = 1.5
_B: Final = 0.5
_MIN_SOFT_SIM: Final = 0.5
_UNKNOWN_TERM_WEIGHT: Final = 0.25
"""Share of an unmatched query word in the normalisation: ASR inserts filler words."""

_WORD_RE: Final = re.compile(r"[a-z0-9]+")
_MARKDOWN_RE: Final = re.compile(r"[*_`>#]+|\[([^\]]*)\]\([^)]*\)")

_STOPWORD_TEXT: Final = """
a about an and any are as at be been but by can could did do does doing explain for from give
had has have how i i'd if in into is it its it's know like me mean means meaning my of on or
please say should so tell than that the their them then there these they this to us want was
we what whats what's when where which who why will with would you your define definition
describe okay ok um uh hey hi hello thanks thank
"""
_STOPWORDS: Final = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class Entry:
    """One note: its heading, its body as plain spoken text, and the file it came from."""

    heading: str
    body: str
    source: str


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A ranked search result; ``score`` is normalised (about 1.0 = every term in the heading)."""

    entry: Entry
    score: float


# --------------------------------------------------------------------------- text processing


def _stem(word: str) -> str:
    """A deliberately small suffix stripper: enough to fold plurals and -ing/-ed forms."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Lower-case, stemmed content words of ``text`` (stopwords removed)."""
    words = _WORD_RE.findall(text.lower().replace("'", ""))
    return [_stem(w) for w in words if w not in _STOPWORDS]


_PHONETIC_MAP: Final = str.maketrans("cqz", "kks")


def phonetic_key(word: str) -> str:
    """A coarse consonant skeleton: similar-sounding words share a key ("loss", "laws")."""
    w = word.lower().replace("ph", "f").replace("ck", "k").replace("x", "ks")
    w = re.sub(r"c(?=[eiy])", "s", w)
    w = w.translate(_PHONETIC_MAP)
    head, tail = w[:1], re.sub(r"[aeiouhwy]", "", w[1:])
    if head in "aeiouy":
        head = "a"
    out: list[str] = []
    for ch in head + tail:
        if not out or out[-1] != ch:
            out.append(ch)
    return "".join(out)


def _trigrams(word: str) -> frozenset[str]:
    padded = f"^{word}$"
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def similarity(a: str, b: str) -> float:
    """Soft match of two stemmed tokens in [0, 1]: 1 exact, 0.7 same sound, ≤0.8 trigram Dice."""
    if a == b:
        return 1.0
    if min(len(a), len(b)) < 3 or a.isdigit() or b.isdigit():
        return 0.0
    ta, tb = _trigrams(a), _trigrams(b)
    dice = 2 * len(ta & tb) / (len(ta) + len(tb))
    key = phonetic_key(a)
    sound = 0.7 if len(key) >= 2 and key == phonetic_key(b) else 0.0
    fuzzy = 0.8 * dice if dice >= _MIN_SOFT_SIM else 0.0
    return max(sound, fuzzy)


def _plain(markdown: str) -> str:
    text = _MARKDOWN_RE.sub(lambda m: m.group(1) or "", markdown)
    return " ".join(text.split())


def parse_markdown(text: str, source: str) -> list[Entry]:
    """Split Markdown into entries at each ``## `` heading; text before the first is ignored."""
    entries: list[Entry] = []
    heading: str | None = None
    body: list[str] = []
    for line in [*text.splitlines(), "## "]:
        if line.startswith("## ") or line.rstrip() == "##":
            if heading:
                entries.append(Entry(heading, _plain("\n".join(body)), source))
            heading, body = line[3:].strip(), []
        elif heading is not None:
            body.append(line)
    return [e for e in entries if e.body]


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True, slots=True)
class _Doc:
    heading_tf: Counter[str]
    body_tf: Counter[str]
    length: float


class KnowledgeBase:
    """An immutable set of entries with a soft-matching BM25 index over them."""

    def __init__(self, entries: Sequence[Entry], *, min_score: float = DEFAULT_MIN_SCORE) -> None:
        self._entries = tuple(entries)
        self.min_score = min_score
        self._docs = tuple(
            _Doc(
                Counter(tokens(e.heading)),
                Counter(tokens(e.body)),
                _HEADING_WEIGHT * len(tokens(e.heading)) + _BODY_WEIGHT * len(tokens(e.body)),
            )
            for e in self._entries
        )
        n = max(len(self._docs), 1)
        self._avg_length = sum(d.length for d in self._docs) / n or 1.0
        vocab: set[str] = set()
        for d in self._docs:
            vocab.update(d.heading_tf, d.body_tf)
        self._vocab = tuple(sorted(vocab))
        self._vocab_set = frozenset(vocab)

    @classmethod
    def from_folder(cls, path: str | Path | Traversable, **kwargs: float) -> KnowledgeBase:
        """Load every ``*.md`` file in ``path`` (sorted by name).

        Raises:
            FileNotFoundError: ``path`` is not a directory.
        """
        folder: Traversable = Path(path) if isinstance(path, str) else path
        if not folder.is_dir():
            raise FileNotFoundError(f"knowledge folder not found: {folder}")
        files = sorted(
            (f for f in folder.iterdir() if f.name.endswith(".md")), key=lambda f: f.name
        )
        entries: list[Entry] = []
        for f in files:
            entries.extend(parse_markdown(f.read_text(encoding="utf-8"), f.name))
        log.info("knowledge.loaded", files=len(files), entries=len(entries))
        return cls(entries, **kwargs)

    @classmethod
    def example(cls) -> KnowledgeBase:
        """The trading glossary and playbook shipped in ``voxgate/tools/kb_example``."""
        return cls.from_folder(resources.files("voxgate.tools").joinpath("kb_example"))

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def vocabulary(self) -> list[str]:
        """Distinct lower-case words of all headings (unstemmed), e.g. to bias an ASR model."""
        words: set[str] = set()
        for e in self._entries:
            words.update(_WORD_RE.findall(e.heading.lower()))
        return sorted(words)

    def search(self, query: str, k: int = 3, *, min_score: float | None = None) -> list[SearchHit]:
        """Rank entries for ``query``.

        Args:
            query: free text, typically an ASR transcript.
            k: at most this many hits.
            min_score: override of the instance threshold; hits below it are dropped.

        Returns:
            Hits, best first; empty when nothing clears the threshold.
        """
        terms = list(dict.fromkeys(tokens(query)))
        if not terms or not self._docs:
            return []
        threshold = self.min_score if min_score is None else min_score
        scores = [0.0] * len(self._docs)
        heading_mass = [0.0] * len(self._docs)
        exact = [False] * len(self._docs)
        ideal = total_idf = 0.0
        for term in terms:
            sims = self._soft_vocab(term)
            idf = self._idf(sims)
            known = any(v >= _MIN_SOFT_SIM for v in sims.values())
            weight = idf if known else idf * _UNKNOWN_TERM_WEIGHT
            total_idf += weight
            ideal += weight * (_K1 + 1) * _HEADING_WEIGHT / (_HEADING_WEIGHT + _K1)
            for i, doc in enumerate(self._docs):
                in_heading = _soft_count(doc.heading_tf, sims)
                tf = _HEADING_WEIGHT * in_heading + _BODY_WEIGHT * _soft_count(doc.body_tf, sims)
                if tf:
                    norm = _K1 * (1 - _B + _B * doc.length / self._avg_length)
                    scores[i] += idf * tf * (_K1 + 1) / (tf + norm)
                    heading_mass[i] += idf * min(in_heading, 1.0)
                    exact[i] = exact[i] or term in doc.heading_tf or term in doc.body_tf
        ranked = sorted(
            (
                # body-only evidence counts half: the heading names what an entry answers
                SearchHit(self._entries[i], s / ideal * (0.5 + 0.5 * heading_mass[i] / total_idf))
                for i, s in enumerate(scores)
                # look-alike words alone are not evidence: one word must match exactly
                if s > 0 and exact[i]
            ),
            key=lambda h: h.score,
            reverse=True,
        )
        return [h for h in ranked if h.score >= threshold][:k]

    def _soft_vocab(self, term: str) -> dict[str, float]:
        # a word the notes contain was probably heard right: its look-alikes count for less
        factor = _KNOWN_WORD_SOFT_FACTOR if term in self._vocab_set else 1.0
        sims = {v: similarity(term, v) for v in self._vocab}
        return {v: (s if v == term else s * factor) for v, s in sims.items() if s > 0}

    def _idf(self, sims: dict[str, float]) -> float:
        df = sum(
            1
            for d in self._docs
            if any(
                s >= _MIN_SOFT_SIM and (v in d.heading_tf or v in d.body_tf)
                for v, s in sims.items()
            )
        )
        n = len(self._docs)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))


def _soft_count(tf: Counter[str], sims: dict[str, float]) -> float:
    return sum(count * sims.get(word, 0.0) for word, count in tf.items())


def load_entries(texts: Iterable[tuple[str, str]]) -> list[Entry]:
    """Parse ``(source, markdown)`` pairs into entries (for notes that do not live on disk)."""
    out: list[Entry] = []
    for source, text in texts:
        out.extend(parse_markdown(text, source))
    return out
