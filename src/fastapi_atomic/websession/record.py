"""What a store keeps for one web session, and the changes a request makes to it."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

JSON = Any
Op = tuple[Literal["set", "delete", "append", "increment"], str, JSON]


@dataclass
class SessionRecord:
    data: dict[str, JSON]
    created_at: float
    last_seen_at: float
    csrf_token: str
    public_id: str
    user_id: str | None = None
    authenticated_at: float | None = None
    user_agent: str = ""
    version: int = 1

    def expires_at(self, idle_timeout: float, absolute_timeout: float) -> float:
        started = self.authenticated_at if self.authenticated_at is not None else self.created_at
        return min(self.last_seen_at + idle_timeout, started + absolute_timeout)

    def to_json(self) -> str:
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionRecord:
        return cls(**json.loads(text))

    def copy(self) -> SessionRecord:
        """A copy whose mapping can change apart from this one's.

        Values are shared: nothing here changes a value in place (see :func:`apply_ops`), and a
        session's record is parsed afresh for each request, so no request sees another's. A
        deep copy would make every save cost as much as the session is large (a thousand order
        ids copied for each new order).
        """
        return replace(self, data=dict(self.data))


@dataclass
class Changes:
    """Per-key changes of one request, replayed on the newest record when saving.

    Replaying (rather than writing the whole mapping) is what keeps concurrent requests of one
    session from losing each other's writes: different keys both survive, the same key ends with
    the last committed value, and appends and increments compose.
    """

    ops: list[Op] = field(default_factory=list)
    touch: float | None = None

    def __bool__(self) -> bool:
        return bool(self.ops)


def apply_ops(data: dict[str, JSON], ops: list[Op]) -> dict[str, JSON]:
    """``data`` with ``ops`` applied, copy-on-write: a value is replaced, never changed in place."""
    result = dict(data)
    for kind, key, value in ops:
        if kind == "set":
            result[key] = copy.deepcopy(value)
        elif kind == "delete":
            result.pop(key, None)
        elif kind == "append":
            current = result.get(key)
            result[key] = [*current, value] if isinstance(current, list) else [value]
        elif kind == "increment":
            current = result.get(key)
            result[key] = (current if isinstance(current, int | float) else 0) + value
    return result


def apply_changes(record: SessionRecord, changes: Changes) -> SessionRecord:
    updated = record.copy()
    updated.data = apply_ops(record.data, changes.ops)
    if changes.touch is not None:
        updated.last_seen_at = max(record.last_seen_at, changes.touch)
    updated.version = record.version + 1
    return updated
