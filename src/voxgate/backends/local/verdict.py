"""How sure the knowledge responder is: answer, ask "did you mean …?", or say it does not know.

Owns: :func:`judge`, which turns a transcript into a :class:`Verdict` from the knowledge
base's normalised search scores. An entry is read out only when its score clears
``answer_score`` and no other entry scores within ``margin`` of it; a weaker or contested
best match becomes a question naming the candidates (unless the transcript's content words are
exactly one heading's); nothing above ``suggest_score`` means
"I don't know". The defaults are calibrated on recognised speech by ``bench/kb_threshold.py``
(numbers in docs/local-engine.md); :func:`suggestion` / :func:`suggested_heading` write and
read the question so a following "yes" can be answered.

Pure functions over an immutable :class:`~voxgate.tools.knowledge.KnowledgeBase`; no I/O,
no state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from voxgate.tools.knowledge import DEFAULT_MIN_SCORE, Entry, KnowledgeBase, SearchHit, tokens

#: Calibrated (bench/kb_threshold.py): the best entry is read out at or above this score…
DEFAULT_ANSWER_SCORE: Final = 0.5
#: … when the runner-up scores at least this much less; otherwise "did you mean …?".
DEFAULT_MARGIN: Final = 0.1
#: Under this, not even a suggestion: "I don't know".
DEFAULT_SUGGEST_SCORE: Final = DEFAULT_MIN_SCORE

_SUGGESTION = "Did you mean {}?"
_SUGGESTION_RE: Final = re.compile(r"^Did you mean (.+)\?$")
_YES: Final = frozenset(
    [
        "yes",
        "yeah",
        "yep",
        "yes please",
        "correct",
        "right",
        "exactly",
        "sure",
        "that's right",
        "that one",
        "please",
    ]
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a transcript: ``answer`` ``entry``, ask about ``candidates``, or not."""

    kind: Literal["answer", "did_you_mean", "dont_know"]
    entry: Entry | None = None
    candidates: tuple[str, ...] = ()
    score: float = 0.0

    @property
    def heading(self) -> str | None:
        return self.entry.heading if self.entry is not None else None


def judge(
    kb: KnowledgeBase,
    heard: str,
    *,
    answer_score: float = DEFAULT_ANSWER_SCORE,
    margin: float = DEFAULT_MARGIN,
    suggest_score: float = DEFAULT_SUGGEST_SCORE,
) -> Verdict:
    """Decide how to reply to ``heard`` (see the module docstring)."""
    hits = kb.search(heard, k=5, min_score=suggest_score)
    return judge_hits(hits, heard, answer_score=answer_score, margin=margin)


def judge_hits(
    hits: Sequence[SearchHit],
    heard: str,
    *,
    answer_score: float = DEFAULT_ANSWER_SCORE,
    margin: float = DEFAULT_MARGIN,
) -> Verdict:
    """:func:`judge` over hits already found, best first (e.g. the ``search_knowledge``
    tool's results, issue 14)."""
    if not hits:
        return Verdict("dont_know")
    # the question names exactly one heading ("what is margin": Margin, not Margin call;
    # "what is a limit order": Limit order, not Entering with a limit order)
    words = set(tokens(heard))
    exact = next((h for h in hits if set(tokens(h.entry.heading)) == words), None)
    if exact is not None and exact.score >= answer_score:
        return Verdict("answer", exact.entry, (exact.entry.heading,), exact.score)
    best = hits[0]
    close = [h for h in hits[1:] if best.score - h.score < margin]
    if best.score >= answer_score and not close:
        return Verdict("answer", best.entry, (best.entry.heading,), best.score)
    names = (best.entry.heading, *(h.entry.heading for h in close[:1]))
    return Verdict("did_you_mean", best.entry, names, best.score)


def suggestion(candidates: tuple[str, ...]) -> str:
    """The question for ``candidates``: "Did you mean stop loss order or stop limit order?"."""
    return _SUGGESTION.format(" or ".join(c.lower() for c in candidates))


def suggested_heading(kb: KnowledgeBase, question: str, reply: str) -> Entry | None:
    """The entry a "yes" (``reply``) confirms, if ``question`` suggested exactly one."""
    words = " ".join(re.findall(r"[a-z']+", reply.lower()))
    match = _SUGGESTION_RE.match(question.strip())
    if words not in _YES or match is None or " or " in match.group(1):
        return None
    wanted = match.group(1).lower()
    return next((e for e in kb.entries if e.heading.lower() == wanted), None)
