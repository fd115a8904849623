"""FastAPI dependencies: the request's unit of work and its AsyncSession as Annotated aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from .exceptions import UnitOfWorkMissing
from .unit_of_work import IsolationLevel, UnitOfWork


def unit_of_work_of(request: Request) -> UnitOfWork:
    """The request's unit of work (for code that has the Request; routes use ``UoW``)."""
    uow = request.scope.get("fastapi_atomic.uow")
    if not isinstance(uow, UnitOfWork):
        raise UnitOfWorkMissing()
    return uow


# Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, a hand-off per dependency per request that costs more than
# the work (and, under load, fights for the GIL with the event loop).


async def get_unit_of_work(request: Request) -> UnitOfWork:
    return unit_of_work_of(request)


async def get_db(request: Request) -> AsyncSession:
    return unit_of_work_of(request).db


UoW = Annotated[UnitOfWork, Depends(get_unit_of_work)]
DB = Annotated[AsyncSession, Depends(get_db)]


def isolation_level(level: IsolationLevel) -> Callable[[Request], Awaitable[None]]:
    """A dependency that runs the route's transaction at ``level``.

    ``@router.post("/transfers", dependencies=[Depends(isolation_level("SERIALIZABLE"))])``
    """

    async def apply(request: Request) -> None:
        await unit_of_work_of(request).set_isolation_level(level)

    return apply
