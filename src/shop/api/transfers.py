from __future__ import annotations

from fastapi import APIRouter, Depends, status

from fastapi_atomic import DBDep
from shop.services import transfers

from .deps import Csrf, CurrentUser, idempotency_key, transfer_isolation
from .schemas import TransferIn, TransferOut

router = APIRouter(prefix="/transfers", tags=["transfers"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={401: {}, 404: {}, 409: {}},
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
