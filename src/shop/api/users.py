from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DB
from shop.services import accounts

from .schemas import AccountOut, SignUp, UserCreated

router = APIRouter(prefix="/api/users", tags=["users"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "E-mail taken"}},
)
async def sign_up(body: SignUp, db: DB) -> UserCreated:
    user, user_accounts = await accounts.sign_up(
        db, name=body.name, email=body.email, password=body.password
    )
    return UserCreated(
        id=user.id,
        name=user.name,
        email=user.email,
        accounts=[AccountOut.model_validate(account) for account in user_accounts],
    )
