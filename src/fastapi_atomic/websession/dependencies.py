"""FastAPI dependencies for the request's WebSession."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..dependencies import UNIT_OF_WORK
from ..exceptions import ConfigurationError
from ..middleware import WEBSESSIONS
from ..unit_of_work import SqlAlchemyUnitOfWork
from .session import WebSession


async def get_websession(request: Request) -> WebSession:
    """The request's WebSession, loaded (one store read, only for routes that ask for it)."""
    manager = request.scope.get(WEBSESSIONS)
    uow = request.scope.get(UNIT_OF_WORK)
    if manager is None or not isinstance(uow, SqlAlchemyUnitOfWork):
        raise ConfigurationError(
            "No web sessions in this request: pass a WebSessionManager to the middleware "
            "(app.add_middleware(AtomicMiddleware, engine=engine, websessions=manager))."
        )
    websession: WebSession = manager.open(request.scope, uow)
    await websession.load()
    return websession


WebSessionDep = Annotated[WebSession, Depends(get_websession)]
