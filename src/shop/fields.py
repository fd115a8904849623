"""The rules a person's name, e-mail and password follow, wherever they come from: a request
body, the settings, a command's options."""

from __future__ import annotations

from typing import Annotated

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
Email = Annotated[EmailStr, AfterValidator(lambda value: value.lower())]
Password = Annotated[str, Field(min_length=8, max_length=128), Text]
