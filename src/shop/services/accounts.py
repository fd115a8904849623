"""Users and their accounts. Plain async functions over the request's AsyncSession.

The statements of the money paths (here, in orders.py and transfers.py) are Core statements
built once, with bind parameters: a statement built for each request, and taken through the
ORM's execution layer, costs more CPU than the database spends running it.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Account, User, table
from shop.errors import Conflict, NotFound, PaymentDeclined

from .passwords import hash_password, verify_password


async def sign_up(
    db: AsyncSession, *, name: str, email: str, password: str, role: str = "customer"
) -> User:
    """Create a user and their first account (balance 0): both rows or neither.

    The unique index decides between concurrent sign-ups with one e-mail; the loser gets a
    Conflict and its transaction is rolled back by the unit of work.
    """
    user = User(
        name=name,
        email=email,
        password_hash=await hash_password(password),
        role=role,
        accounts=[Account(balance=0)],
    )
    try:
        async with db.begin_nested():  # its rollback takes the user out of the session too
            db.add(user)
            await db.flush()
    except IntegrityError as exc:
        raise Conflict("That e-mail address is already registered.") from exc
    return user


async def find_user_by_email(db: AsyncSession, email: str) -> User | None:
    user: User | None = await db.scalar(select(User).where(User.email == email))
    return user


async def accounts_of(db: AsyncSession, user_id: int) -> list[Account]:
    return list(
        await db.scalars(select(Account).where(Account.user_id == user_id).order_by(Account.id))
    )


async def owned_account(db: AsyncSession, *, user_id: int, account_id: int) -> Account:
    """The user's account; NotFound for anyone else's, or one that does not exist."""
    account: Account | None = await db.scalar(
        select(Account).where(Account.id == account_id, Account.user_id == user_id)
    )
    if account is None:
        raise NotFound(f"Account {account_id} not found.")
    return account


accounts = table(Account)

#: the user's account's balance, the row locked (FOR NO KEY UPDATE: see orders.py)
_LOCKED_BALANCE = (
    select(accounts.c.balance)
    .where(accounts.c.id == bindparam("account_id"), accounts.c.user_id == bindparam("user_id"))
    .with_for_update(key_share=True)
)
_CHANGE_BALANCE = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"))
    .values(balance=accounts.c.balance + bindparam("by"))
)


async def debit(db: AsyncSession, *, user_id: int, account_id: int, amount: int) -> None:
    """Take ``amount`` from the user's account, locked first; PaymentDeclined if it is short."""
    balance = await db.scalar(_LOCKED_BALANCE, {"account_id": account_id, "user_id": user_id})
    if balance is None:
        raise NotFound(f"Account {account_id} not found.")
    if balance < amount:
        raise PaymentDeclined(f"Insufficient funds in account {account_id}.")
    await change_balance(db, account_id=account_id, by=-amount)


async def change_balance(db: AsyncSession, *, account_id: int, by: int) -> None:
    """Add ``by`` cents (negative: take) in one UPDATE; the database refuses a negative balance."""
    await db.execute(_CHANGE_BALANCE, {"account_id": account_id, "by": by})


async def ensure_admin(db: AsyncSession, *, email: str, password: str) -> User:
    """The admin named by the settings exists with that password and role (idempotent)."""
    user = await find_user_by_email(db, email)
    if user is None:
        return await sign_up(db, name="Administrator", email=email, password=password, role="admin")
    user.role = "admin"
    if not await verify_password(user.password_hash, password):
        user.password_hash = await hash_password(password)
    await db.flush()
    return user
