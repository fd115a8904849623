"""The rules a person's name, e-mail and password follow, wherever they come from: a request
body, the settings, a command's options."""

from __future__ import annotations

import re
from typing import Annotated

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import AfterValidator, EmailStr, Field, StringConstraints


def storable(text: str) -> str:
    """Text a database can keep: no NUL (PostgreSQL refuses it) and no lone surrogate (no
    encoding can carry it). Refused as bad input (422), never a failure of the database."""
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return text


Text = AfterValidator(storable)
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), Text]


def _special_use_domains() -> str:
    """The addresses email-validator refuses although JSON Schema's ``email`` format admits
    them, those at a special-use name (``.test``, ``.local``, ...), as a pattern their JSON
    Schema excludes: a client generated from the OpenAPI document refuses them too."""
    names = (
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)
        for name in SPECIAL_USE_DOMAIN_NAMES
    )
    return rf"^[^@]+@(?!([^@]*\.)?({'|'.join(names)})$)"


Email = Annotated[
    EmailStr,
    AfterValidator(lambda value: value.lower()),
    Field(json_schema_extra={"pattern": _special_use_domains()}),
]
Password = Annotated[str, Field(min_length=8, max_length=128), Text]

#: a sum of money in cents (a price, a deposit, a transfer) is at most this
MAX_CENTS = 100_000_000
#: an amount to move: more than nothing
Cents = Annotated[int, Field(gt=0, le=MAX_CENTS)]
#: a price may be zero (a free sample)
Price = Annotated[int, Field(ge=0, le=MAX_CENTS)]
Stock = Annotated[int, Field(ge=0, le=1_000_000_000)]
#: how many of a product one order line takes
Quantity = Annotated[int, Field(gt=0, le=10_000)]
#: a row id: within the database's integer, so no number too big for it reaches a query
Id = Annotated[int, Field(gt=0, le=2**31 - 1)]
CardNumber = Annotated[str, StringConstraints(pattern=r"^[0-9]{12,19}$")]
Sku = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), Text]
ProductName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), Text
]
