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
        self._keys = [key.encode() for key in keys]

    def _signature(self, key: bytes, session_id: str) -> str:
        # hmac.digest: the one-shot C implementation, no HMAC object per request.
        digest = hmac.digest(key, b"websession:" + session_id.encode(), "sha256")
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign(self, session_id: str) -> str:
        return f"{session_id}.{self._signature(self._keys[0], session_id)}"

    def unsign(self, cookie: str) -> tuple[str, bool] | None:
        """The id in a cookie and whether it needs re-signing; None for anything not ours."""
        if len(cookie) != MAX_COOKIE_LENGTH or cookie.count(".") != 1:
            return None
        session_id, signature = cookie.split(".")
        if not _ID.match(session_id) or not signature.isascii():
            return None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(signature, self._signature(key, session_id)):
                return session_id, index != 0
        return None
