"""Errors of the library. Each message says how to fix the problem it names."""

from __future__ import annotations

from collections.abc import Sequence


class AtomicError(Exception):
    """Base class of every error raised by fastapi_atomic."""


class ConfigurationError(AtomicError):
    """The library is wired up wrongly; the message says what to change."""


class UnitOfWorkMissing(ConfigurationError):
    def __init__(self) -> None:
        super().__init__(
            "No unit of work in this request: add AtomicMiddleware to the app "
            "(app.add_middleware(AtomicMiddleware, engine=engine))."
        )


class TooLate(ConfigurationError):
    """A setting that must come before the first statement came after it."""


class ConcurrentChange(AtomicError):
    """Something the request read changed before it could lock it: re-run the whole request.

    For optimistic checks that a plain SQL error would not signal (a price read without a lock,
    found different once the row is locked). The unit of work treats it like a serialization
    failure: the transaction is rolled back and the request re-run, within the same bounds.
    """


class ServiceUnavailable(AtomicError):
    """A backing service (database, session store) did not answer: the client gets a 503.

    Raise it (or a subclass) from a before-commit hook or a route to turn the request into a
    clean 503 with ``detail`` as its message; the transaction is rolled back.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ReplayResponse(AtomicError):
    """Raised to answer with a response recorded earlier (an idempotent replay), verbatim.

    Internal: the idempotency keys raise it, the middleware rolls back whatever the attempt
    did and sends the recorded response.
    """

    def __init__(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(f"replaying a recorded {status} response")
        self.status = status
        self.headers = list(headers)
        self.body = body
