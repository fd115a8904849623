"""The storefront's forms: the API's field rules, read from form fields a person types.

A person types ``12.50`` where the API takes 1250 cents, and may type a card number with
spaces; otherwise each field is the same type the JSON API validates with (``shop.fields``).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

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
    Text,
)


def _cents(value: object) -> object:
    """``12.50`` (or ``12``, ``€12.50``) → 1250; anything else is refused with a hint."""
    if not isinstance(value, str):
        return value
    text = value.strip().removeprefix("€").removeprefix("$").removeprefix("£").strip()
    try:
        amount = Decimal(text) if len(text) <= 20 else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount.adjusted() > 15:
        raise ValueError("Enter an amount such as 12.50.")
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise ValueError("Enter at most two decimals, such as 12.50.")
    return int(amount * 100)


def _digits(value: object) -> object:
    """A card number as people type it: ``4242 4242 4242 4242``."""
    return value.replace(" ", "").replace("-", "") if isinstance(value, str) else value


Amount = Annotated[Cents, BeforeValidator(_cents)]
PriceField = Annotated[Price, BeforeValidator(_cents)]
Card = Annotated[CardNumber, BeforeValidator(_digits)]


class Form(BaseModel):
    """Form fields are text: ``"3"`` is read as 3. Fields a form sends for the page (the CSRF
    token, the idempotency key) are not the model's business."""

    model_config = ConfigDict(extra="ignore")


class LoginForm(Form):
    email: Email
    password: Annotated[str, Field(min_length=1, max_length=1024), Text]


class SignUpForm(Form):
    name: Name
    email: Email
    password: Password


class AddToCartForm(Form):
    product_id: Id
    quantity: Quantity = 1


class QuantityForm(Form):
    quantity: Annotated[int, Field(ge=0, le=10_000)]


class CheckoutForm(Form):
    method: Literal["card", "account"]
    card_number: Card | None = None
    account_id: Id | None = None


class DepositForm(Form):
    account_id: Id
    amount: Amount
    card_number: Card


class TransferForm(Form):
    from_account_id: Id
    to_account_id: Id
    amount: Amount


class ProductForm(Form):
    sku: Sku
    name: ProductName
    price: PriceField
    stock: Stock


class ProductChangeForm(Form):
    price: PriceField
    stock: Stock


M = TypeVar("M", bound=Form)


async def read_form(request: Request, model: type[M]) -> tuple[M | None, dict[str, str]]:
    """The form as ``model``, or None and a message for each field that is wrong."""
    form = await request.form()
    # An empty field is a missing one: "Please fill this in", or the default of an optional one.
    data = {name: value for name, value in form.items() if isinstance(value, str) and value}
    try:
        return model.model_validate(data), {}
    except ValidationError as exc:
        return None, _messages(exc)


def _messages(exc: ValidationError) -> dict[str, str]:
    messages: dict[str, str] = {}
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "form"
        messages.setdefault(field, _sentence(error))
    return messages


def _sentence(error: ErrorDetails) -> str:
    kind, message = str(error["type"]), str(error["msg"])
    if kind == "missing":
        return "Please fill this in."
    if kind == "string_pattern_mismatch":
        return "Enter 12 to 19 digits."
    if kind.startswith(("int_parsing", "int_type")):
        return "Enter a whole number."
    message = message.removeprefix("Value error, ")
    return message[0].upper() + message[1:] if message else "This is not valid."


#: fields a page never shows again once submitted (a failed page may be kept as an answer)
SECRET_FIELDS = frozenset({"password", "card_number", "csrf_token"})


async def typed_values(request: Request) -> dict[str, str]:
    """What the person typed, to show again on a form that failed (never a secret)."""
    form = await request.form()
    return {
        name: value[:200]
        for name, value in form.items()
        if isinstance(value, str) and name not in SECRET_FIELDS and not name.endswith("_key")
    }
