"""FastAPI dependencies: the request's unit of work and its AsyncSession, as Annotated aliases.

``get_db`` depends on ``get_unit_of_work``, so a test that overrides the unit of work
(``app.dependency_overrides[get_unit_of_work] = lambda: FakeUnitOfWork(db)``) overrides the
AsyncSession routes receive too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from .exceptions import UnitOfWorkMissing
from .unit_of_work import IsolationLevel, UnitOfWork

#: where AtomicMiddleware keeps the request's unit of work in the ASGI scope
UNIT_OF_WORK = "fastapi_atomic.unit_of_work"

# Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hand-off for no work.


async def get_unit_of_work(request: Request) -> UnitOfWork:
    """The request's unit of work."""
    uow = request.scope.get(UNIT_OF_WORK)
    if uow is None:
        raise UnitOfWorkMissing()
    return uow  # type: ignore[no-any-return]


UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_unit_of_work)]


async def get_db(uow: UnitOfWorkDep) -> AsyncSession:
    """The AsyncSession of the request's transaction."""
    return uow.db


DBDep = Annotated[AsyncSession, Depends(get_db)]


def isolation_level(level: IsolationLevel) -> Callable[[UnitOfWork], Awaitable[None]]:
    """A dependency that runs the route's transaction at ``level``.

    ``@router.post("/transfers", dependencies=[Depends(isolation_level("SERIALIZABLE"))])``
    """

    async def apply(uow: UnitOfWorkDep) -> None:
        await uow.set_isolation_level(level)

    return apply
