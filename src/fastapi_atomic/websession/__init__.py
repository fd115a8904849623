"""Server-side web sessions that commit with the request's data.

store = SqlStore(web_sessions_table(Base.metadata), cache=True)   # or RedisStore, MemoryStore
manager = WebSessionManager(store, keys=["current-key", "retiring-key"])
app.add_middleware(AtomicMiddleware, engine=engine, websessions=manager)

@app.post("/login")
async def login(websession: WebSessionDep) -> LoggedIn:
    websession.login(user_id="42", data={"name": "Ada"})   # new id: no fixation
    return LoggedIn(csrf_token=websession.csrf_token)
"""

from .cache import RecordCache
from .csrf import require_csrf_token
from .dependencies import WebSessionDep, get_websession
from .manager import WebSessionManager
from .record import Changes, SessionRecord
from .session import SessionInfo, WebSession
from .signing import KeyRing
from .stores.base import WebSessionStore
from .stores.memory import MemoryStore
from .stores.redis import RedisStore
from .stores.sql import SqlStore, web_sessions_table
from .stores.sql_trigger import postgres_notify_trigger, sqlite_change_log

__all__ = [
    "Changes",
    "KeyRing",
    "MemoryStore",
    "RecordCache",
    "RedisStore",
    "SessionInfo",
    "SessionRecord",
    "SqlStore",
    "WebSession",
    "WebSessionDep",
    "WebSessionManager",
    "WebSessionStore",
    "get_websession",
    "postgres_notify_trigger",
    "require_csrf_token",
    "sqlite_change_log",
    "web_sessions_table",
]
