"""Web-session stores: one protocol, one file per store, one shared contract test suite."""

from .base import WebSessionStore
from .memory import MemoryStore

__all__ = ["MemoryStore", "WebSessionStore"]
