"""Admission limits: concurrent sessions in total and per subject (end user). Pure.

A full gateway refuses a new session with a clear error (``voxgate_capacity_exceeded`` /
``voxgate_subject_limit``, close 1013 "try again later"), never a hang. Bounded: it tracks one
counter per subject with a live session, so its size is at most the number of live sessions.
"""

from __future__ import annotations

from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import SERVER_ERROR, FatalSessionError


class SessionLimits:
    def __init__(self, max_sessions: int, max_per_subject: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_subject = max_per_subject
        self.active = 0
        self._per_subject: dict[str, int] = {}

    def acquire(self, subject: str | None) -> None:
        """Count a new session in, or raise.

        Raises:
            FatalSessionError: the gateway or this subject is at its limit.
        """
        if self.active >= self.max_sessions:
            raise FatalSessionError(
                f"The gateway is at its limit of {self.max_sessions} concurrent sessions. "
                "Try again later.",
                code="voxgate_capacity_exceeded",
                close_code=CloseCode.TRY_AGAIN_LATER,
                error_type=SERVER_ERROR,
            )
        if subject is not None:
            count = self._per_subject.get(subject, 0)
            if count >= self.max_per_subject:
                raise FatalSessionError(
                    f"This user already has {count} open sessions (the limit is "
                    f"{self.max_per_subject}). Close one and try again.",
                    code="voxgate_subject_limit",
                    close_code=CloseCode.TRY_AGAIN_LATER,
                    error_type=SERVER_ERROR,
                )
            self._per_subject[subject] = count + 1
        self.active += 1

    def release(self, subject: str | None) -> None:
        self.active -= 1
        if subject is not None:
            count = self._per_subject.get(subject, 0) - 1
            if count > 0:
                self._per_subject[subject] = count
            else:
                self._per_subject.pop(subject, None)
