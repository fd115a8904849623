"""Password hashing with argon2id, off the event loop (a hash costs tens of milliseconds)."""

from __future__ import annotations

from anyio import to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Checked for unknown e-mails, so that a miss costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash("not a real password, only here to spend the same time")


async def hash_password(password: str) -> str:
    return await to_thread.run_sync(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True only for a real hash that matches; an unknown user costs the same time."""
    return await to_thread.run_sync(_verify, password_hash, password)


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return password_hash is not None
