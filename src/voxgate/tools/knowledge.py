"""The knowledge base: Markdown notes parsed into entries and a small lexical retriever.

Owns: parsing a folder tree of Markdown files into entries (:func:`parse_markdown` says how
headings, ``###`` sections, lists and files without sections are read), each entry knowing its
source file and its *kind* (the top folder below the root: ``playbook``, ``glossary``,
``postmortems`` …); :class:`KnowledgeLibrary`, which reloads a folder when its files change;
and :meth:`KnowledgeBase.search`, a dependency-free BM25 ranker that is
forgiving of speech-recognition errors. A query term matches a note term exactly, by the
same phonetic key ("laws" ~ "loss") or by character-trigram overlap ("lost" ~ "loss"); such
soft matches count as fractional term frequencies. Heading terms weigh more than body terms.
Scores are normalised against an ideal heading hit for every query term, so a threshold can
reject questions the notes do not cover ("what's the weather on mars").

Must not: do I/O after construction (the library alone looks at the folder again), log per
query, or keep mutable state shared between instances. A :class:`KnowledgeBase` is immutable
once built, so sessions and worker threads may share one instance.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
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
#: Queries whose full ranking is remembered per knowledge base.
_RANKED_MEMO: Final = 256
#: Longer queries are ranked but not remembered (the memo stays a few hundred KB at most).
_RANKED_MEMO_MAX_CHARS: Final = 1000
"""Share of an unmatched query word in the normalisation: ASR inserts filler words."""

_WORD_RE: Final = re.compile(r"[a-z0-9]+")
_MARKDOWN_RE: Final = re.compile(r"[*_`>#]+|\[([^\]]*)\]\([^)]*\)")
_HEADING_RE: Final = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$")
_LIST_ITEM_RE: Final = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+(.*)$")
_FENCE_RE: Final = re.compile(r"^\s*(```|~~~)")
_ASKED_RE: Final = re.compile(r"^\s*asked:\s*(.*?)\s*$", re.IGNORECASE)
_SENTENCE_END_RE: Final = re.compile(r"(?<=[?.!])\s+")

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
    #: the top folder below the notes' root (``playbook``, ``postmortems``), or the file's
    #: name without ``.md`` for a file at the root; "" when parsed without a folder
    kind: str = ""
    #: how users ask for it (``Asked:`` lines): not spoken, not searched; they join the
    #: speech recogniser's prompt (:func:`asr_phrases`)
    asked: tuple[str, ...] = ()


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


def _spoken(lines: list[str]) -> str:
    """Body lines as speakable text: paragraphs joined, each list item its own sentence."""
    sentences: list[str] = []
    paragraph: list[str] = []

    def close() -> None:
        if paragraph:
            sentences.append(" ".join(paragraph))
            paragraph.clear()

    for line in lines:
        item = _LIST_ITEM_RE.match(line)
        if item is not None:
            close()
            text = _plain(item.group(1)).rstrip()
            if text:
                sentences.append(text if text[-1] in ".!?:;" else text + ".")
        elif not line.strip():
            close()
        else:
            paragraph.append(line.strip())
    close()
    return _plain(" ".join(sentences))


def _front_matter(lines: list[str]) -> tuple[list[str], str | None]:
    """Lines after a YAML front matter block, and its ``title:`` if any."""
    if not lines or lines[0].strip() != "---":
        return lines, None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            title = next(
                (
                    m.group(1).strip().strip("\"'")
                    for m in (re.match(r"^title:\s*(.+)$", x) for x in lines[1:i])
                    if m
                ),
                None,
            )
            return lines[i + 1 :], title or None
    return lines, None


def _title_from_name(source: str) -> str:
    stem = PurePosixPath(source).stem.replace("_", " ").replace("-", " ").strip()
    return stem[:1].upper() + stem[1:] if stem else source


def parse_markdown(text: str, source: str, *, kind: str = "") -> list[Entry]:
    """Split Markdown into entries.

    * each ``## `` heading starts an entry, the text under it is its body;
    * a ``### `` heading starts an entry of its own, headed ``Section: Subsection`` (the
      section's text before its first ``###`` stays the section's entry);
    * text before the first ``##`` is the file's introduction and is ignored, unless the file
      has no ``##`` or ``###`` heading at all: then the whole file is one entry, headed by its
      ``#`` title (or the front matter's ``title:``, or the file name);
    * list items (``-``, ``*``, ``+``, ``1.``) are read as sentences, one per item;
    * a line ``Asked: How big should each position be? How much do I risk per trade?`` is
      not part of the body: its questions are how users ask for the entry
      (:attr:`Entry.asked`, for the speech recogniser's prompt);
    * YAML front matter is skipped, fenced code is read as text, ``####`` and deeper headings
      are read as text, and entries without text are dropped.
    """
    lines, title = _front_matter(text.splitlines())
    sections: list[tuple[int, str, list[str], list[str]]] = []  # level, heading, body, asked
    preamble: list[str] = []
    preamble_asked: list[str] = []
    parent: str | None = None
    fenced = False
    for line in lines:
        if _FENCE_RE.match(line):
            fenced = not fenced
            continue
        asked = None if fenced else _ASKED_RE.match(line)
        if asked is not None:
            questions = [q for q in _SENTENCE_END_RE.split(_plain(asked.group(1))) if q]
            (sections[-1][3] if sections else preamble_asked).extend(questions)
            continue
        match = None if fenced else _HEADING_RE.match(line)
        level = len(match.group(1)) if match else 0
        if match is not None and level == 1 and title is None and not sections:
            title = _plain(match.group(2))
        elif match is not None and level in (2, 3):
            heading = _plain(match.group(2))
            if level == 2:
                parent = heading
            elif parent:
                heading = f"{parent}: {heading}"
            sections.append((level, heading, [], []))
        elif sections:
            sections[-1][2].append(_plain(match.group(2)) + "." if match and level > 3 else line)
        elif match is None or level > 1:
            preamble.append(line)
    if not sections:
        body = _spoken(preamble)
        heading = title or _title_from_name(source)
        return [Entry(heading, body, source, kind, tuple(preamble_asked))] if body else []
    entries = [
        Entry(h, _spoken(body), source, kind, tuple(asked)) for _, h, body, asked in sections if h
    ]
    return [e for e in entries if e.body]


def asr_phrases(entries: Iterable[Entry]) -> list[str]:
    """What a speech recogniser is prompted with, best first: every heading (the words the
    notes are about), then how users ask (``Asked:`` lines). A recogniser with a budget
    keeps the front."""
    entries = tuple(entries)
    return [e.heading for e in entries] + [q for e in entries for q in e.asked]


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
        # what similarity() computes for each vocabulary word, computed once (a search
        # compares every query term with every word)
        self._vocab_features = tuple(
            (v, len(v) < 3 or v.isdigit(), _trigrams(v), phonetic_key(v)) for v in self._vocab
        )
        # full rankings of recent queries: the local engine's answer and the search_knowledge
        # tool's run for the same transcript search once (bounded; entries are immutable)
        self._ranked: OrderedDict[str, tuple[SearchHit, ...]] = OrderedDict()
        self._ranked_lock = threading.Lock()

    @classmethod
    def from_folder(cls, path: str | Path | Traversable, **kwargs: float) -> KnowledgeBase:
        """Load every ``*.md`` file under ``path``, nested folders included (sorted by path).

        An entry's source is its file's path below ``path``; its kind is the first folder of
        that path (or the file's name for a file at the top).

        Raises:
            FileNotFoundError: ``path`` is not a directory.
        """
        folder: Traversable = Path(path) if isinstance(path, str) else path
        if not folder.is_dir():
            raise FileNotFoundError(f"knowledge folder not found: {folder}")
        files = sorted(_markdown_files(folder), key=lambda pair: pair[0])
        entries: list[Entry] = []
        for rel, f in files:
            parts = PurePosixPath(rel).parts
            kind = parts[0] if len(parts) > 1 else PurePosixPath(rel).stem
            entries.extend(parse_markdown(f.read_text(encoding="utf-8"), rel, kind=kind.lower()))
        log.info("knowledge.loaded", files=len(files), entries=len(entries))
        return cls(entries, **kwargs)

    @property
    def kinds(self) -> list[str]:
        """The kinds of entry the notes have, sorted."""
        return sorted({e.kind for e in self._entries if e.kind})

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
        threshold = self.min_score if min_score is None else min_score
        with self._ranked_lock:
            ranked = self._ranked.get(query)
            if ranked is not None:
                self._ranked.move_to_end(query)
        if ranked is None:
            ranked = self._rank(query)
            if len(query) > _RANKED_MEMO_MAX_CHARS:  # a tool argument can be anything
                return [h for h in ranked if h.score >= threshold][:k]
            with self._ranked_lock:
                self._ranked[query] = ranked
                while len(self._ranked) > _RANKED_MEMO:
                    self._ranked.popitem(last=False)
        return [h for h in ranked if h.score >= threshold][:k]

    def _rank(self, query: str) -> tuple[SearchHit, ...]:
        """Every entry with evidence for ``query``, best first (no threshold)."""
        terms = list(dict.fromkeys(tokens(query)))
        if not terms or not self._docs:
            return ()
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
        return tuple(ranked)

    def _soft_vocab(self, term: str) -> dict[str, float]:
        """``{word: similarity(term, word)}`` over the vocabulary, zeros left out."""
        known = term in self._vocab_set
        if len(term) < 3 or term.isdigit():  # only an exact match counts
            return {term: 1.0} if known else {}
        # a word the notes contain was probably heard right: its look-alikes count for less
        factor = _KNOWN_WORD_SOFT_FACTOR if known else 1.0
        grams, key = _trigrams(term), phonetic_key(term)
        keyed = len(key) >= 2
        sims: dict[str, float] = {}
        for word, short, word_grams, word_key in self._vocab_features:
            if word == term:
                sims[word] = 1.0
                continue
            if short:
                continue
            dice = 2 * len(grams & word_grams) / (len(grams) + len(word_grams))
            sim = 0.7 if keyed and key == word_key else 0.0
            if dice >= _MIN_SOFT_SIM:
                sim = max(sim, 0.8 * dice)
            if sim > 0:
                sims[word] = sim * factor
        return sims

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


def _markdown_files(
    folder: Traversable, prefix: str = "", depth: int = 0
) -> list[tuple[str, Traversable]]:
    """``(path below the root, file)`` of every ``*.md`` under ``folder`` (hidden names and
    more than 8 levels skipped)."""
    found: list[tuple[str, Traversable]] = []
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if depth < 8:
                found.extend(_markdown_files(child, rel + "/", depth + 1))
        elif child.name.endswith(".md"):
            found.append((rel, child))
    return found


class KnowledgeLibrary:
    """A folder of notes that reloads itself when its files change (issue 14).

    :meth:`current` returns the :class:`KnowledgeBase`, rebuilt when a Markdown file below the
    folder was added, removed or changed (names, sizes and modification times are compared at
    most every ``check_interval_s``). A reload that fails (a file being written) keeps the
    previous notes. Thread-safe: worker threads and the event loop may call it.
    """

    def __init__(
        self,
        path: str | Path | Traversable,
        *,
        check_interval_s: float = 1.0,
        min_score: float = DEFAULT_MIN_SCORE,
    ) -> None:
        self.path: Traversable = Path(path) if isinstance(path, str) else path
        self.check_interval_s = check_interval_s
        self._min_score = min_score
        self._lock = threading.Lock()
        self._signature = self._scan()
        self._kb = KnowledgeBase.from_folder(self.path, min_score=min_score)
        self._checked_at = time.monotonic()
        self.reloads = 0

    @classmethod
    def example(cls) -> KnowledgeLibrary:
        """The trading glossary and playbook shipped with voxgate (never changes)."""
        return cls(resources.files("voxgate.tools").joinpath("kb_example"), check_interval_s=0)

    def current(self) -> KnowledgeBase:
        """The notes as they are now (reloaded first if a file changed)."""
        if self.check_interval_s <= 0:
            return self._kb  # never looked at again
        now = time.monotonic()
        if now - self._checked_at < self.check_interval_s:
            return self._kb
        with self._lock:
            if now - self._checked_at < self.check_interval_s:
                return self._kb
            self._checked_at = now
            signature = self._scan()
            if signature != self._signature:
                try:
                    self._kb = KnowledgeBase.from_folder(self.path, min_score=self._min_score)
                except (OSError, UnicodeDecodeError) as exc:
                    log.warning("knowledge.reload_failed", error=type(exc).__name__)
                else:
                    self._signature = signature
                    self.reloads += 1
            return self._kb

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        if not isinstance(self.path, Path):
            return ()
        seen: list[tuple[str, int, int]] = []
        for root, dirs, files in os.walk(self.path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith(".md") and not name.startswith("."):
                    full = os.path.join(root, name)
                    try:
                        st = os.stat(full)
                    except OSError:
                        continue
                    seen.append((full, st.st_mtime_ns, st.st_size))
        return tuple(sorted(seen))


def _soft_count(tf: Counter[str], sims: dict[str, float]) -> float:
    return sum(count * sims.get(word, 0.0) for word, count in tf.items())


def load_entries(texts: Iterable[tuple[str, str]]) -> list[Entry]:
    """Parse ``(source, markdown)`` pairs into entries (for notes that do not live on disk)."""
    out: list[Entry] = []
    for source, text in texts:
        out.extend(parse_markdown(text, source))
    return out
