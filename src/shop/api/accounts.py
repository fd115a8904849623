from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DB, UoW
from shop.services import accounts, deposits

from .deps import Csrf, CurrentUser, Gateway, Idempotent
from .schemas import AccountOut, DepositIn, DepositOut, PathId

router = APIRouter(prefix="/api/accounts", tags=["accounts"], dependencies=[Csrf])


@router.get("")
async def list_accounts(db: DB, user: CurrentUser) -> list[AccountOut]:
    return [AccountOut.model_validate(a) for a in await accounts.accounts_of(db, user.id)]


@router.post(
    "/{account_id}/deposits",
    status_code=status.HTTP_201_CREATED,
    responses={402: {}, 404: {}, 503: {}},
)
async def deposit(
    account_id: PathId,
    body: DepositIn,
    uow: UoW,
    user: CurrentUser,
    gateway: Gateway,
    idempotency: Idempotent,
) -> DepositOut:
    record = await deposits.deposit(
        uow,
        gateway,
        user_id=user.id,
        account_id=account_id,
        amount=body.amount,
        card_number=body.card_number,
        payment_key=idempotency.external_key("deposit") if idempotency else None,
    )
    return DepositOut.model_validate(record)
