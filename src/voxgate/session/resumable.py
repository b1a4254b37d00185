"""The resume side of one session: its current token and the rules for taking it back. Pure.

Issue #7. A ``voxgate.v1`` client gets a token in ``voxgate.session.resumable`` right after
``session.created``. The session accepts exactly one token at a time (generation + nonce); a
resume rotates it before anything else happens, so a token used once, or replayed by someone
who copied it, is refused. The token names the session's subject; a resuming connection that
also presents a key must present one of the same subject.
"""

from __future__ import annotations

from voxgate.auth import resume as tokens


class ResumeState:
    def __init__(self, secret: bytes, *, session_id: str, subject: str | None) -> None:
        self._secret = secret
        self.session_id = session_id
        self.subject = subject
        self.generation = 0
        self._nonce = ""
        self.resumes = 0

    def issue(self) -> str:
        """Mint the next token; every earlier one stops working."""
        self.generation += 1
        token, claims = tokens.mint(
            self._secret,
            session_id=self.session_id,
            subject=self.subject,
            generation=self.generation,
        )
        self._nonce = claims.nonce
        return token

    def accepts(self, claims: tokens.ResumeClaims, *, presented_subject: str | None) -> str | None:
        """None if ``claims`` may resume this session now, else why not (for logs)."""
        if claims.session_id != self.session_id:
            return "other_session"
        if claims.subject != self.subject:
            return "other_subject"
        if presented_subject is not None and presented_subject != self.subject:
            return "other_subject"
        if claims.generation != self.generation or not tokens.same_nonce(claims.nonce, self._nonce):
            return "token_used"
        return None

    def consume(self) -> str:
        """Accept a resume: rotate now (before any I/O) and return the new token."""
        self.resumes += 1
        return self.issue()
