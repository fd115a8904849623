from __future__ import annotations

from fastapi import APIRouter, Depends, status

from fastapi_atomic import DBDep
from shop.services import transfers

from .deps import Csrf, CurrentUser, idempotency_key, transfer_isolation
from .responses import (
    IDEMPOTENT,
    LEASE_RETRY_AFTER,
    NO_CSRF_TOKEN,
    NOT_LOGGED_IN,
    error,
    success,
)
from .schemas import TransferIn, TransferOut

router = APIRouter(prefix="/transfers", tags=["transfers"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **IDEMPOTENT,
        201: success(private=True),
        401: NOT_LOGGED_IN,
        403: NO_CSRF_TOKEN,
        404: error("The `from` account is not the user's, or either account does not exist."),
        409: error(
            "Insufficient funds, or a request with this Idempotency-Key is still in progress.",
            private=True,
            headers=LEASE_RETRY_AFTER,
        ),
    },
    # In this order: the CSRF token, the Idempotency-Key (a replay answers at once), then
    # the isolation level of the transaction to come.
    dependencies=[Csrf, Depends(idempotency_key), Depends(transfer_isolation)],
)
async def transfer(body: TransferIn, user: CurrentUser, db: DBDep) -> TransferOut:
    record = await transfers.transfer(
        db,
        user_id=user.id,
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=body.amount,
    )
    return TransferOut.model_validate(record)
