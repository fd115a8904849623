"""FastAPI dependencies for the request's WebSession."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..dependencies import unit_of_work_of
from ..exceptions import ConfigurationError
from .manager import EXTENSION, WebSessionManager
from .session import WebSession


async def get_websession(request: Request) -> WebSession:
    """The request's WebSession, loaded (one store read, only for routes that ask for it)."""
    uow = unit_of_work_of(request)
    websession = uow.extensions.get(EXTENSION)
    if not isinstance(websession, WebSession):
        if not isinstance(websession, WebSessionManager):
            raise ConfigurationError(
                "No web session in this request: pass a WebSessionManager to AtomicMiddleware "
                "(participants=[manager])."
            )
        websession = websession.open(request.scope, uow)
    await websession.load()
    return websession


WebSessionDep = Annotated[WebSession, Depends(get_websession)]
