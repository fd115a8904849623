from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DBDep, UnitOfWorkDep
from shop.services import accounts, deposits

from .deps import Csrf, CurrentUser, Gateway, Idempotent
from .schemas import AccountOut, DepositIn, DepositOut, PathId

router = APIRouter(prefix="/accounts", tags=["accounts"])


@router.get("", responses={401: {}})
async def list_accounts(db: DBDep, user: CurrentUser) -> list[AccountOut]:
    return [AccountOut.model_validate(a) for a in await accounts.accounts_of(db, user.id)]


@router.post(
    "/{account_id}/deposits",
    status_code=status.HTTP_201_CREATED,
    responses={401: {}, 402: {}, 404: {}, 503: {}},
    dependencies=[Csrf],
)
async def deposit(
    account_id: PathId,
    body: DepositIn,
    user: CurrentUser,
    idempotency_key: Idempotent,
    uow: UnitOfWorkDep,
    gateway: Gateway,
) -> DepositOut:
    record = await deposits.deposit(
        uow,
        gateway,
        user_id=user.id,
        account_id=account_id,
        amount=body.amount,
        card_number=body.card_number,
        payment_key=idempotency_key.external_key("deposit") if idempotency_key else None,
    )
    return DepositOut.model_validate(record)
