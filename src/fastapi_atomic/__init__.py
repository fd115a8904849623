"""fastapi_atomic: a request is a unit of work.

Its database writes, its web-session changes and its idempotency record become visible
together, after the handler succeeded and before the client sees the response, or not at all.
"""

from .dependencies import DBDep, UnitOfWorkDep, get_db, get_unit_of_work, isolation_level
from .engine import create_engine
from .exceptions import (
    AtomicError,
    ConcurrentChange,
    ConfigurationError,
    ServiceUnavailable,
    TooLate,
    UnitOfWorkMissing,
)
from .idempotency import IdempotencyKey, IdempotencyKeys, claim_idempotency_key, idempotency_table
from .metrics import AtomicMetrics, MetricSet, PoolMetrics
from .middleware import (
    AtomicMiddleware,
    BodyStream,
    TransactionOutcome,
    current_unit_of_work,
    get_body_stream,
    transaction_outcome,
)
from .retry import Backoff, retry_reason
from .unit_of_work import IsolationLevel, UnitOfWork, atomic

__all__ = [
    "AtomicError",
    "AtomicMetrics",
    "AtomicMiddleware",
    "Backoff",
    "BodyStream",
    "ConcurrentChange",
    "ConfigurationError",
    "DBDep",
    "IdempotencyKey",
    "IdempotencyKeys",
    "IsolationLevel",
    "MetricSet",
    "PoolMetrics",
    "ServiceUnavailable",
    "TooLate",
    "TransactionOutcome",
    "UnitOfWork",
    "UnitOfWorkDep",
    "UnitOfWorkMissing",
    "atomic",
    "claim_idempotency_key",
    "create_engine",
    "current_unit_of_work",
    "get_body_stream",
    "get_db",
    "get_unit_of_work",
    "idempotency_table",
    "isolation_level",
    "retry_reason",
    "transaction_outcome",
]
