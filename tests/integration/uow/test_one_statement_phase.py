"""run_phase(..., one_statement=True): one statement in autocommit, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import registry

from fastapi_atomic import Backoff, ConcurrentChange, ConfigurationError, UnitOfWork, create_engine

metadata = MetaData()
things = Table(
    "one_statement_things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
    await engine.dispose()


def new_uow(engine: AsyncEngine) -> UnitOfWork:
    return UnitOfWork(engine, phase_backoff=Backoff(attempts=3, base=0.001, cap=0.002))


async def names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.scalars(select(things.c.name).order_by(things.c.id))).all())


async def in_transaction(db: AsyncSession) -> bool:
    """Whether the driver's connection is inside a transaction block (no statement sent)."""
    raw = (await (await db.connection()).get_raw_connection()).driver_connection
    return bool(
        raw.is_in_transaction() if hasattr(raw, "is_in_transaction") else raw.in_transaction
    )


@pytest.mark.parametrize("one_statement", [True, False])
async def test_the_statement_runs_outside_a_transaction_block(
    engine: AsyncEngine, one_statement: bool
) -> None:
    """No BEGIN and no COMMIT around it: its effect is committed the moment it ends."""
    seen: list[bool] = []

    async def work(db: AsyncSession) -> None:
        await db.execute(insert(things).values(name="alone"))
        seen.append(await in_transaction(db))

    await new_uow(engine).run_phase(work, one_statement=one_statement)
    assert seen == [not one_statement]
    assert await names(engine) == ["alone"]


async def test_a_second_statement_is_refused(engine: AsyncEngine) -> None:
    async def work(db: AsyncSession) -> None:
        await db.execute(insert(things).values(name="first"))
        await db.execute(insert(things).values(name="second"))

    with pytest.raises(ConfigurationError, match="one-statement phase"):
        await new_uow(engine).run_phase(work, one_statement=True)
    assert await names(engine) == ["first"]  # what autocommit means: say so loudly


class Thing:
    def __init__(self, name: str) -> None:
        self.name = name


registry().map_imperatively(Thing, things)


async def test_an_orm_flush_is_refused(engine: AsyncEngine) -> None:
    """A flush may be several statements, each committing on its own in autocommit."""

    async def work(db: AsyncSession) -> None:
        db.add_all([Thing("one"), Thing("two")])
        await db.flush()

    with pytest.raises(ConfigurationError, match="one-statement phase"):
        await new_uow(engine).run_phase(work, one_statement=True)
    assert await names(engine) == []


async def test_a_retryable_failure_runs_the_statement_again(engine: AsyncEngine) -> None:
    attempts: list[int] = []

    async def work(db: AsyncSession) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConcurrentChange("the first attempt read something that moved")
        return (
            await db.execute(insert(things).values(name="retried").returning(things.c.id))
        ).scalar_one()

    thing_id = await new_uow(engine).run_phase(work, one_statement=True)
    assert len(attempts) == 2 and thing_id is not None
    assert await names(engine) == ["retried"]


async def test_an_isolation_level_is_refused(engine: AsyncEngine) -> None:
    async def work(db: AsyncSession) -> None:
        await db.execute(insert(things).values(name="never"))

    with pytest.raises(ConfigurationError, match="autocommit"):
        await new_uow(engine).run_phase(work, one_statement=True, isolation_level="SERIALIZABLE")
    assert await names(engine) == []


async def test_the_request_transaction_is_not_in_autocommit_after_it(engine: AsyncEngine) -> None:
    """The phase's autocommit is its own: the request's AsyncSession still runs a transaction."""
    uow = new_uow(engine)
    await uow.run_phase(
        lambda db: db.execute(insert(things).values(name="phase")), one_statement=True
    )
    await uow.db.execute(insert(things).values(name="main 1"))
    await uow.db.execute(insert(things).values(name="main 2"))
    assert await in_transaction(uow.db)
    await uow.rollback()
    await uow.close()
    assert await names(engine) == ["phase"]
