"""The account page: balances, a deposit by card, a transfer (amounts in currency units)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from fastapi_atomic import UnitOfWorkDep
from fastapi_atomic.websession import WebSession, WebSessionDep
from shop.api.deps import Gateway, SessionUser, transfer_isolation
from shop.errors import CardDeclined, ShopError
from shop.services import deposits, transfers
from shop.services.accounts import accounts_of

from .forms import DepositForm, TransferForm, read_form, typed_values
from .pages import (
    Customer,
    FormChecks,
    claim_form_key,
    flash,
    form_key,
    money,
    redirect,
    refusal,
    render,
)

router = APIRouter(include_in_schema=False)

KeyField = Annotated[str | None, Form(alias="form_key", max_length=100)]


@router.get("/account")
async def account_page(
    request: Request, uow: UnitOfWorkDep, websession: WebSessionDep, user: Customer
) -> Response:
    return await _account(request, uow, websession, user)


@router.post("/account/deposits", dependencies=FormChecks)
async def deposit(
    request: Request,
    uow: UnitOfWorkDep,
    gateway: Gateway,
    websession: WebSessionDep,
    user: Customer,
    key: KeyField = None,
) -> Response:
    claimed = await claim_form_key(request, user, key)
    form, errors = await read_form(request, DepositForm)
    if form is None:
        return await _account(request, uow, websession, user, "deposit", errors, 422)
    try:
        record = await deposits.deposit(
            uow,
            gateway,
            user_id=user.id,
            account_id=form.account_id,
            amount=form.amount,
            card_number=form.card_number,
            payment_key=claimed.external_key("deposit") if claimed else None,
        )
    except ShopError as exc:
        # A declined card is said next to the card's field, anything else above the form.
        field = "card_number" if isinstance(exc, CardDeclined) else "form"
        return await _account(
            request, uow, websession, user, "deposit", {field: refusal(exc)}, exc.status_code
        )
    flash(
        websession, f"Deposited {_money(request, record.amount)} to account #{record.account_id}."
    )
    return redirect("/account")


@router.post("/account/transfers", dependencies=[*FormChecks, Depends(transfer_isolation)])
async def transfer(
    request: Request,
    uow: UnitOfWorkDep,
    websession: WebSessionDep,
    user: Customer,
    key: KeyField = None,
) -> Response:
    await claim_form_key(request, user, key)
    form, errors = await read_form(request, TransferForm)
    if form is None:
        return await _account(request, uow, websession, user, "transfer", errors, 422)
    try:
        record = await transfers.transfer(
            uow.db,
            user_id=user.id,
            from_account_id=form.from_account_id,
            to_account_id=form.to_account_id,
            amount=form.amount,
        )
    except ShopError as exc:
        return await _account(
            request, uow, websession, user, "transfer", {"form": exc.detail}, exc.status_code
        )
    flash(
        websession,
        f"Transferred {_money(request, record.amount)} from account #{record.from_account_id} "
        f"to account #{record.to_account_id}.",
    )
    return redirect("/account")


def _money(request: Request, cents: int) -> str:
    return money(cents, request.app.state.settings.currency)


async def _account(
    request: Request,
    uow: UnitOfWorkDep,
    websession: WebSession,
    user: SessionUser,
    failed: Literal["deposit", "transfer"] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The account page; after a failed form, that form as it was typed, with its errors."""
    typed = await typed_values(request) if failed else {}
    context: dict[str, object] = {
        "accounts": await accounts_of(uow.db, user.id),
        "deposit_key": form_key(),
        "transfer_key": form_key(),
    }
    for name in ("deposit", "transfer"):
        context[f"{name}_errors"] = (errors or {}) if name == failed else {}
        context[f"{name}_values"] = typed if name == failed else {}
    return render(request, websession, "account.html", context, status_code=status_code)
