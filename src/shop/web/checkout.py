"""Checkout: the cart as shown becomes one order, however often "Place order" is pressed.

The form carries the cart it showed and an idempotency key made when it was rendered. A second
submit of the same form is answered with the first one's answer (the order page); a cart
changed meanwhile in another tab is shown again rather than ordered unseen; a web session that
ended meanwhile sends the buyer to log in, with the cart the page showed kept.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import DBDep, UnitOfWorkDep
from fastapi_atomic.websession import WebSession, WebSessionDep
from shop.api.deps import Gateway, SessionUser
from shop.errors import PaymentDeclined, ShopError
from shop.services import orders
from shop.services.accounts import accounts_of

from .cart import MAX_LINES, Cart, CartError, decode, encode
from .cart_pages import CartLine, cart_lines
from .forms import CheckoutForm, read_form
from .pages import (
    Customer,
    FormChecks,
    Visitor,
    claim_form_key,
    flash,
    form_key,
    login_url,
    redirect,
    refusal,
    render,
)

router = APIRouter(include_in_schema=False)

CartField = Annotated[str, Form(alias="cart", max_length=2000)]
KeyField = Annotated[str | None, Form(alias="checkout_key", max_length=100)]


@router.get("/checkout")
async def checkout_page(
    request: Request, db: DBDep, websession: WebSessionDep, user: Customer
) -> Response:
    lines = await cart_lines(db, websession)
    if not lines:
        flash(websession, "Your cart is empty: add something first.")
        return redirect("/cart")
    return await _checkout(request, db, websession, user, lines)


@router.post("/checkout", dependencies=FormChecks)
async def place_order(
    request: Request,
    uow: UnitOfWorkDep,
    gateway: Gateway,
    websession: WebSessionDep,
    user: Visitor,
    cart: CartField = "",
    key: KeyField = None,
) -> Response:
    try:
        shown = decode(cart)
    except CartError:
        shown = {}
    if user is None:
        # The session ended while the page was open: keep what the page showed, log in first.
        ended = websession.had_cookie and not websession.is_live
        kept = Cart(websession)
        if not kept.quantities and shown:
            kept.replace(shown)
        flash(
            websession,
            "Your session has ended. Please log in to place your order; your cart is kept."
            if ended
            else "Please log in to place your order; your cart is kept.",
        )
        return redirect(login_url("/checkout"))

    # First, so that a second submit of this form answers as the first did (its order).
    claimed = await claim_form_key(request, user, key)
    db = uow.db
    lines = await cart_lines(db, websession)
    form, errors = await read_form(request, CheckoutForm)
    if form is not None and form.method == "card" and form.card_number is None:
        errors["card_number"] = errors.get("card_number", "Enter the card number.")
    if form is not None and form.method == "account" and form.account_id is None:
        errors["account_id"] = "Choose an account."
    if form is None or errors:
        return await _checkout(request, db, websession, user, lines, errors=errors, status_code=422)
    if not lines:
        flash(websession, "Your cart is empty: add something first.")
        return redirect("/cart")
    if len(lines) > MAX_LINES:  # two tabs each added the last line there was room for
        message = f"A cart holds at most {MAX_LINES} different products: remove some first."
        return await _checkout(request, db, websession, user, lines, error=message, status_code=422)
    if _quantities(lines) != shown:
        message = (
            "Your cart changed since this page was shown (in another tab?). "
            "Check it and place the order again."
        )
        return await _checkout(request, db, websession, user, lines, error=message, status_code=409)

    order_lines = [orders.Line(line.product.id, line.quantity) for line in lines]
    try:
        if form.method == "account":
            assert form.account_id is not None
            order = await orders.checkout_with_account(
                db, user_id=user.id, lines=order_lines, account_id=form.account_id
            )
        else:
            assert form.card_number is not None
            order = await orders.checkout_with_card(
                uow,
                gateway,
                user_id=user.id,
                lines=order_lines,
                card_number=form.card_number,
                payment_key=claimed.external_key("order") if claimed else None,
            )
    except ShopError as exc:
        field = "card_number" if form.method == "card" else "account_id"
        errors = {field: refusal(exc)} if isinstance(exc, PaymentDeclined) else {}
        error = None if errors else refusal(exc)
        return await _checkout(
            request,
            uow.db,
            websession,
            user,
            lines,
            error=error,
            errors=errors,
            method=form.method,
            status_code=exc.status_code,
        )
    Cart(websession).clear()
    websession.append("order_ids", order.id)  # with the order, or not at all
    flash(websession, "Thank you! Your order is paid.")
    return redirect(f"/orders/{order.id}")


def _quantities(lines: list[CartLine]) -> dict[int, int]:
    return {line.product.id: line.quantity for line in lines}


async def _checkout(
    request: Request,
    db: AsyncSession,
    websession: WebSession,
    user: SessionUser,
    lines: list[CartLine],
    *,
    error: str | None = None,
    errors: dict[str, str] | None = None,
    method: str = "card",
    status_code: int = 200,
) -> Response:
    """The checkout page, with a new key: after a failure, placing the order again is a new
    attempt (a declined card's answer is the first key's for good)."""
    context = {
        "lines": lines,
        "total": sum(line.subtotal for line in lines),
        "accounts": await accounts_of(db, user.id),
        "cart": encode(_quantities(lines)),
        "checkout_key": form_key(),
        "error": error,
        "errors": errors or {},
        "method": method,
    }
    return render(request, websession, "checkout.html", context, status_code=status_code)
