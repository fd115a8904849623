"""Prometheus counters of web sessions, per store: loads, writes, and the read cache's answers.

The cache's hit ratio is the one to watch: a cache whose feed is down answers nothing from
memory (every load a miss), and every authenticated request then reads its session from the
store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter

from ..metrics import MetricSet


@dataclass(frozen=True)
class StoreCounters:
    """One store's counters, labelled once (``labels()`` locks and hashes on every call)."""

    loads: Any
    created: Any
    updated: Any
    deleted: Any
    hits: Any
    misses: Any


@dataclass(frozen=True)
class WebSessionMetrics(MetricSet):
    loads: Counter
    writes: Counter
    cache: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        return cls(
            loads=Counter(
                "atomic_websession_loads",
                "Web sessions loaded by requests (from the cache or the store).",
                ["store"],
                registry=registry,
            ),
            writes=Counter(
                "atomic_websession_writes",
                "Web sessions written by requests: created, updated or deleted.",
                ["store", "op"],
                registry=registry,
            ),
            cache=Counter(
                "atomic_websession_cache",
                "Web-session loads answered from the read cache (hit) or not (miss).",
                ["store", "result"],
                registry=registry,
            ),
        )

    def for_store(self, store: str) -> StoreCounters:
        return StoreCounters(
            loads=self.loads.labels(store),
            created=self.writes.labels(store, "create"),
            updated=self.writes.labels(store, "update"),
            deleted=self.writes.labels(store, "delete"),
            hits=self.cache.labels(store, "hit"),
            misses=self.cache.labels(store, "miss"),
        )
