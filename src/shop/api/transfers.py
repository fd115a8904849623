from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DB
from shop.services import transfers

from .deps import Csrf, CurrentUser, Idempotent, TransferIsolation
from .schemas import TransferIn, TransferOut

router = APIRouter(prefix="/api/transfers", tags=["transfers"], dependencies=[Csrf])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={404: {}, 409: {}},
    dependencies=[TransferIsolation],
)
async def transfer(
    body: TransferIn, db: DB, user: CurrentUser, _idempotency: Idempotent
) -> TransferOut:
    record = await transfers.transfer(
        db,
        user_id=user.id,
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=body.amount,
    )
    return TransferOut.model_validate(record)
