"""Web-session stores: one base class, one file per store, one shared contract test suite."""

from .base import WebSessionStore
from .memory import MemoryStore

__all__ = ["MemoryStore", "WebSessionStore"]
