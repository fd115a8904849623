"""Session ids: 256 random bits, HMAC-signed in the cookie, hashed in the store.

The first key of the ring signs; every key verifies, so keys rotate without logging anyone out
(a cookie signed by a retiring key is re-signed with the current one). The store only ever sees
a SHA-256 of the id, so a leaked store does not leak live sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from ..exceptions import ConfigurationError

_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SIGNATURE_LENGTH = 43
MAX_COOKIE_LENGTH = 43 + 1 + _SIGNATURE_LENGTH


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def store_key(session_id: str) -> str:
    """What the store is keyed by: the id's hash, never the id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class KeyRing:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys or any(not key for key in keys):
            raise ConfigurationError("KeyRing needs at least one non-empty secret key.")
        # Each key's HMAC with the message's fixed prefix already absorbed: a request copies
        # one and adds the id, instead of starting from the key.
        self._macs = [hmac.new(key.encode(), b"websession:", hashlib.sha256) for key in keys]

    def _signature(self, mac: hmac.HMAC, session_id: str) -> str:
        mac = mac.copy()
        mac.update(session_id.encode())
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def sign(self, session_id: str) -> str:
        return f"{session_id}.{self._signature(self._macs[0], session_id)}"

    def unsign(self, cookie: str) -> tuple[str, bool] | None:
        """The id in a cookie and whether it needs re-signing; None for anything not ours."""
        if len(cookie) != MAX_COOKIE_LENGTH or cookie.count(".") != 1:
            return None
        session_id, signature = cookie.split(".")
        if not _ID.match(session_id) or not signature.isascii():
            return None
        for index, mac in enumerate(self._macs):
            if hmac.compare_digest(signature, self._signature(mac, session_id)):
                return session_id, index != 0
        return None
