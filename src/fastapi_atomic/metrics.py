"""Prometheus counters for what the unit of work decided: commits, rollbacks, retries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter


@dataclass(frozen=True)
class AtomicMetrics:
    requests: Counter
    commits: Counter
    rollbacks: Counter
    retries: Counter
    #: labelled children, looked up once (``labels()`` locks and hashes on every call)
    _children: dict[tuple[int, str], Any] = field(default_factory=dict, compare=False, repr=False)

    _default: ClassVar[AtomicMetrics | None] = None

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AtomicMetrics:
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
        return self._child(self.requests, name)

    def rollback(self, reason: str) -> Any:
        return self._child(self.rollbacks, reason)

    def _child(self, counter: Counter, value: str) -> Any:
        child = self._children.get((id(counter), value))
        if child is None:
            child = self._children[(id(counter), value)] = counter.labels(value)
        return child

    @classmethod
    def default(cls) -> AtomicMetrics:
        """One set of counters in the process-wide registry, shared by every app."""
        if cls._default is None:
            cls._default = cls.create(REGISTRY)
        return cls._default
