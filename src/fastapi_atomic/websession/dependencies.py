"""FastAPI dependencies for the request's WebSession."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..dependencies import get_unit_of_work
from ..exceptions import ConfigurationError
from .session import WebSession

EXTENSION = "fastapi_atomic.websession"


async def get_websession(request: Request) -> WebSession:
    """The request's WebSession, loaded (one store read, only for routes that ask for it)."""
    websession = get_unit_of_work(request).extensions.get(EXTENSION)
    if not isinstance(websession, WebSession):
        raise ConfigurationError(
            "No web session in this request: pass a WebSessionManager to AtomicMiddleware "
            "(participants=[manager])."
        )
    await websession.load()
    return websession


WebSessionDep = Annotated[WebSession, Depends(get_websession)]
