from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DBDep
from shop.services import accounts

from .responses import BODY, error, success
from .schemas import SignUp, UserCreated

router = APIRouter(prefix="/users", tags=["users"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **BODY,
        201: success(),
        409: error("The e-mail address is already registered."),
    },
)
async def sign_up(body: SignUp, db: DBDep) -> UserCreated:
    user = await accounts.sign_up(db, name=body.name, email=body.email, password=body.password)
    return UserCreated.model_validate(user)
