"""The storefront's pure rules: amounts typed in currency units, the cart a checkout form
carries, where a log-in may send the browser next."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shop.web.cart import MAX_QUANTITY, CartError, decode, encode
from shop.web.forms import DepositForm, ProductChangeForm, SignUpForm
from shop.web.pages import local_url, money

CARD = "4242424242424242"


@pytest.mark.parametrize(
    ("typed", "cents"),
    [("12.50", 1250), ("12", 1200), ("0.01", 1), (" €7.5 ", 750), ("1000000", 100_000_000)],
)
def test_amounts_are_typed_in_currency_units(typed: str, cents: int) -> None:
    form = DepositForm.model_validate({"account_id": "1", "amount": typed, "card_number": CARD})
    assert form.amount == cents


@pytest.mark.parametrize(
    "typed", ["abc", "", "0", "-5", "1.234", "NaN", "Infinity", "1e400", "1000000.01", "9" * 30]
)
def test_an_amount_that_is_not_one_is_refused(typed: str) -> None:
    with pytest.raises(ValueError):
        DepositForm.model_validate({"account_id": "1", "amount": typed, "card_number": CARD})


def test_a_price_may_be_zero_but_an_amount_may_not() -> None:
    assert ProductChangeForm.model_validate({"price": "0", "stock": "3"}).price == 0
    with pytest.raises(ValueError):
        DepositForm.model_validate({"account_id": "1", "amount": "0.00", "card_number": CARD})


def test_a_card_number_may_be_typed_with_spaces() -> None:
    form = DepositForm.model_validate(
        {"account_id": "1", "amount": "1", "card_number": "4242 4242-4242 4242"}
    )
    assert form.card_number == CARD


def test_sign_up_follows_the_api_rules() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        SignUpForm.model_validate({"name": "A", "email": "a@example.com", "password": "short"})
    form = SignUpForm.model_validate(
        {"name": " Ann ", "email": "Ann@Example.com", "password": "long enough"}
    )
    assert (form.name, form.email) == ("Ann", "ann@example.com")


@given(st.dictionaries(st.integers(1, 2**31 - 1), st.integers(1, MAX_QUANTITY), max_size=100))
def test_a_cart_survives_its_trip_through_a_form(quantities: dict[int, int]) -> None:
    assert decode(encode(dict(sorted(quantities.items())))) == dict(sorted(quantities.items()))


@pytest.mark.parametrize(
    "text", ["1", "1:", ":1", "1:0", "0:1", "1:-1", "a:1", "1:1,1:2", "1:10001", "²:1", "1:1;"]
)
def test_a_cart_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(CartError):
        decode(text)


@pytest.mark.parametrize(
    ("asked", "went"),
    [
        ("/checkout", "/checkout"),
        ("/orders/3?x=1", "/orders/3?x=1"),
        (None, "/"),
        ("", "/"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_after_log_in_the_browser_stays_on_this_site(asked: str | None, went: str) -> None:
    assert local_url(asked) == went


def test_money_is_shown_in_the_currency() -> None:
    assert money(1250) == "€12.50"
    assert money(123456789, "USD") == "$1,234,567.89"
    assert money(-5, "SEK") == "-SEK 0.05"
