"""fastapi_atomic: a request is a unit of work.

Its database writes, its web-session changes and its idempotency record become visible
together, after the handler succeeded and before the client sees the response, or not at all.
"""

from .dependencies import DB, UoW, get_db, get_unit_of_work, isolation_level, unit_of_work_of
from .engine import create_engine
from .exceptions import (
    AtomicError,
    CommitFailed,
    ConcurrentChange,
    ConfigurationError,
    ReplayResponse,
    ServiceUnavailable,
    TooLate,
    UnitOfWorkMissing,
)
from .idempotency import IdempotencyContext, IdempotencyKeys, idempotency_table
from .metrics import AtomicMetrics
from .middleware import AtomicMiddleware, RequestParticipant
from .retry import Backoff, retry_reason
from .unit_of_work import UnitOfWork

__all__ = [
    "DB",
    "AtomicError",
    "AtomicMetrics",
    "AtomicMiddleware",
    "Backoff",
    "CommitFailed",
    "ConcurrentChange",
    "ConfigurationError",
    "IdempotencyContext",
    "IdempotencyKeys",
    "ReplayResponse",
    "RequestParticipant",
    "ServiceUnavailable",
    "TooLate",
    "UnitOfWork",
    "UnitOfWorkMissing",
    "UoW",
    "create_engine",
    "get_db",
    "get_unit_of_work",
    "idempotency_table",
    "isolation_level",
    "retry_reason",
    "unit_of_work_of",
]
