"""Users and their accounts. Plain async functions over the request's AsyncSession."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Account, User
from shop.errors import Conflict

from .passwords import hash_password


async def sign_up(
    db: AsyncSession, *, name: str, email: str, password: str, role: str = "customer"
) -> tuple[User, list[Account]]:
    """Create a user and their first account (balance 0): both rows or neither.

    The unique index decides between concurrent sign-ups with one e-mail; the loser gets a
    Conflict and its transaction is rolled back by the unit of work.
    """
    password_hash = await hash_password(password)
    user = User(name=name, email=email, password_hash=password_hash, role=role)
    db.add(user)
    try:
        await db.flush()
    except IntegrityError as exc:
        raise Conflict("That e-mail address is already registered.") from exc
    account = Account(user_id=user.id, balance=0)
    db.add(account)
    await db.flush()
    return user, [account]


async def find_user_by_email(db: AsyncSession, email: str) -> User | None:
    return (await db.execute(select(User).where(User.email == email))).scalar_one_or_none()


async def accounts_of(db: AsyncSession, user_id: int) -> list[Account]:
    result = await db.execute(
        select(Account).where(Account.user_id == user_id).order_by(Account.id)
    )
    return list(result.scalars())


async def ensure_admin(db: AsyncSession, *, email: str, password: str) -> User:
    """The admin named by the settings exists with that password and role (idempotent)."""
    from .passwords import verify_password

    user = await find_user_by_email(db, email)
    if user is None:
        user, _ = await sign_up(
            db, name="Administrator", email=email, password=password, role="admin"
        )
        return user
    if user.role != "admin":
        user.role = "admin"
    if not await verify_password(user.password_hash, password):
        user.password_hash = await hash_password(password)
    await db.flush()
    return user
