from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DBDep, UnitOfWorkDep
from shop.services import accounts, deposits

from .deps import Csrf, CurrentUser, Gateway, Idempotent
from .responses import (
    GATEWAY_UNAVAILABLE,
    IDEMPOTENT,
    NO_CSRF_TOKEN,
    NOT_LOGGED_IN,
    error,
    success,
)
from .schemas import AccountOut, DepositIn, DepositOut, PathId

router = APIRouter(prefix="/accounts", tags=["accounts"])


@router.get("", responses={200: success(private=True), 401: NOT_LOGGED_IN})
async def list_accounts(db: DBDep, user: CurrentUser) -> list[AccountOut]:
    return [AccountOut.model_validate(a) for a in await accounts.accounts_of(db, user.id)]


@router.post(
    "/{account_id}/deposits",
    status_code=status.HTTP_201_CREATED,
    responses={
        **IDEMPOTENT,
        **GATEWAY_UNAVAILABLE,
        201: success(private=True),
        401: NOT_LOGGED_IN,
        402: error("The card was declined."),
        403: NO_CSRF_TOKEN,
        404: error("Not an account of the user."),
    },
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
