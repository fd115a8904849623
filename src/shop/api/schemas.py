"""Request and response bodies of the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from shop.fields import (
    CardNumber,
    Cents,
    Email,
    Id,
    Name,
    Password,
    Price,
    ProductName,
    Quantity,
    Sku,
    Stock,
)


class Error(BaseModel):
    """The body of every error the shop answers itself: what went wrong, in a sentence."""

    detail: str


class ValidationIssue(BaseModel):
    """One thing wrong with a request, as FastAPI reports it (``input`` left out when JSON
    cannot carry it)."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class Invalid(BaseModel):
    """A 422: FastAPI's list of what is wrong with the request."""

    detail: list[ValidationIssue]


class StrictModel(BaseModel):
    """A request body: unknown fields refused, and no coercion ("100" or true is not 100)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SignUp(StrictModel):
    name: Name
    email: Email
    password: Password


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    balance: int


class UserCreated(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str
    accounts: list[AccountOut]


#: an id in a URL path: the same bounds, so no number too big for the database reaches it
PathId = Annotated[int, Path(gt=0, le=2**31 - 1)]


class ProductIn(StrictModel):
    sku: Sku
    name: ProductName
    price: Price
    stock: Stock


class ProductPatch(StrictModel):
    price: Price | None = None
    stock: Stock | None = None


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    sku: str
    name: str
    price: int
    stock: int


class TransferIn(StrictModel):
    from_account_id: Id
    to_account_id: Id
    amount: Cents


class TransferOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    from_account_id: int
    to_account_id: int
    amount: int


class DepositIn(StrictModel):
    amount: Cents
    card_number: CardNumber


class DepositOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    account_id: int
    amount: int


class ItemIn(StrictModel):
    product_id: Id
    quantity: Quantity


class CardPayment(StrictModel):
    method: Literal["card"]
    card_number: CardNumber


class AccountPayment(StrictModel):
    method: Literal["account"]
    account_id: Id


class OrderIn(StrictModel):
    items: Annotated[list[ItemIn], Field(min_length=1, max_length=100)]
    payment: Annotated[CardPayment | AccountPayment, Field(discriminator="method")]


class OrderItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    product_id: int
    quantity: int
    unit_price: int


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    status: str
    total: int
    items: list[OrderItemOut]
    created_at: datetime
