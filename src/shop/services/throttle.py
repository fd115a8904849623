"""Login throttling: too many failures per e-mail or per client address within a window → 429.

Kept in process memory on purpose: failures must count even though the failed request's
transaction rolls back. With several workers each keeps its own count (a limit per process).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable


class LoginThrottle:
    def __init__(
        self,
        *,
        per_email: int,
        per_address: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_email, self.per_address, self.window, self.clock = (
            per_email,
            per_address,
            window,
            clock,
        )
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, name: str) -> deque[float]:
        failures = self._failures[name]
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[name]
            return deque()
        return failures

    def blocked(self, email: str, address: str) -> bool:
        return (
            len(self._recent(f"e:{email}")) >= self.per_email
            or len(self._recent(f"a:{address}")) >= self.per_address
        )

    def failed(self, email: str, address: str) -> None:
        now = self.clock()
        self._failures[f"e:{email}"].append(now)
        self._failures[f"a:{address}"].append(now)

    def succeeded(self, email: str) -> None:
        self._failures.pop(f"e:{email}", None)
