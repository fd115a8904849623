from __future__ import annotations

from fastapi import APIRouter, Response, status

from shop.services import transfers

from .deps import CustomerDep, TransferIsolation
from .routing import json_response
from .schemas import TransferIn, TransferOut

# The CSRF check is CustomerDep's.
router = APIRouter(prefix="/api/transfers", tags=["transfers"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TransferOut,
    responses={404: {}, 409: {}},
    dependencies=[TransferIsolation],
)
async def transfer(body: TransferIn, customer: CustomerDep) -> Response:
    record = await transfers.transfer(
        customer.uow.db,
        user_id=customer.user.id,
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=body.amount,
    )
    return json_response(TransferOut.model_validate(record), status.HTTP_201_CREATED)
