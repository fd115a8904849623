"""Prometheus metrics: what the unit of work decided (commits, rollbacks, retries), and how busy
each engine's connection pool is.

Every metric works in prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), where
each worker process writes its values to files that one scrape sums: counters add up, and the
pool's gauges are ``livesum`` (the sum over the processes alive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from .pool import FairAsyncAdaptedQueuePool


@dataclass(frozen=True)
class MetricSet:
    """A set of metrics registered together: :meth:`create` makes it in a registry (a test's),
    :meth:`default` once in the process-wide one, shared by every app of the process."""

    #: labelled children, looked up once (``labels()`` locks and hashes on every call)
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(
        default_factory=dict, compare=False, repr=False, kw_only=True
    )

    _defaults: ClassVar[dict[type[MetricSet], MetricSet]] = {}

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        raise NotImplementedError

    @classmethod
    def default(cls) -> Self:
        made = MetricSet._defaults.get(cls)
        if made is None:
            made = MetricSet._defaults[cls] = cls.create(REGISTRY)
        assert isinstance(made, cls)
        return made

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


@dataclass(frozen=True)
class AtomicMetrics(MetricSet):
    requests: Counter
    commits: Counter
    rollbacks: Counter
    retries: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        return cls(
            requests=Counter(
                "atomic_requests",
                "Requests by how their unit of work ended.",
                ["outcome"],
                registry=registry,
            ),
            commits=Counter("atomic_commits", "Request transactions committed.", registry=registry),
            rollbacks=Counter(
                "atomic_rollbacks",
                "Request transactions rolled back.",
                ["reason"],
                registry=registry,
            ),
            retries=Counter(
                "atomic_retries",
                "Requests re-run after a retryable failure.",
                ["reason"],
                registry=registry,
            ),
        )

    def outcome(self, name: str) -> Any:
        return self.child(self.requests, name)

    def rollback(self, reason: str) -> Any:
        return self.child(self.rollbacks, reason)

    def retry(self, reason: str) -> Any:
        return self.child(self.retries, reason)


@dataclass(frozen=True)
class PoolMetrics(MetricSet):
    """Gauges of a connection pool: connections checked out, and requests waiting for one.

    A pool that is always fully in use with requests waiting is too small for the load (or
    the database too slow for it); waiting requests time out into 503s after ``pool_timeout``.
    """

    in_use: Gauge
    waiting: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        return cls(
            in_use=Gauge(
                "atomic_pool_connections_in_use",
                "Connections checked out of the pool.",
                ["pool"],
                registry=registry,
                multiprocess_mode="livesum",
            ),
            waiting=Gauge(
                "atomic_pool_requests_waiting",
                "Requests waiting for a connection of the pool.",
                ["pool"],
                registry=registry,
                multiprocess_mode="livesum",
            ),
        )

    def watch(self, engine: AsyncEngine, pool: str = "default") -> None:
        """Count ``engine``'s connections in use (its pool's checkout and checkin events) and,
        for the fair pool of :func:`~fastapi_atomic.create_engine`, the requests waiting for
        one, under the label ``pool``. Engines watched under one label add up."""
        in_use, waiting = self.in_use.labels(pool), self.waiting.labels(pool)
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "checkout")
        def _checked_out(*_args: Any) -> None:
            in_use.inc()

        @event.listens_for(sync_engine, "checkin")
        def _checked_in(*_args: Any) -> None:
            in_use.dec()

        last = 0

        def report(count: int) -> None:
            # Several engines may share the label: move the gauge by this pool's change.
            nonlocal last
            waiting.inc(count - last)
            last = count

        def attach() -> None:
            if isinstance(sync_engine.pool, FairAsyncAdaptedQueuePool):
                sync_engine.pool.waiting_queue.on_waiting = report

        @event.listens_for(sync_engine, "engine_disposed")
        def _new_pool(*_args: Any) -> None:
            report(0)  # the old pool's waiters got their errors: none of them waits any more
            attach()  # dispose() made a pool of its own; its queue reports too

        attach()
