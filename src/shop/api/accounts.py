from __future__ import annotations

from fastapi import APIRouter, Response, status

from fastapi_atomic import DB
from shop.services import accounts, deposits

from .deps import CurrentUser, CustomerDep
from .routing import json_response
from .schemas import AccountOut, DepositIn, DepositOut, PathId

# The CSRF check is CustomerDep's; listing accounts only reads.
router = APIRouter(prefix="/api/accounts", tags=["accounts"])


@router.get("")
async def list_accounts(db: DB, user: CurrentUser) -> list[AccountOut]:
    return [AccountOut.model_validate(a) for a in await accounts.accounts_of(db, user.id)]


@router.post(
    "/{account_id}/deposits",
    status_code=status.HTTP_201_CREATED,
    response_model=DepositOut,
    responses={402: {}, 404: {}, 503: {}},
)
async def deposit(account_id: PathId, body: DepositIn, customer: CustomerDep) -> Response:
    record = await deposits.deposit(
        customer.uow,
        customer.gateway,
        user_id=customer.user.id,
        account_id=account_id,
        amount=body.amount,
        card_number=body.card_number,
        payment_key=customer.payment_key("deposit"),
    )
    return json_response(DepositOut.model_validate(record), status.HTTP_201_CREATED)
