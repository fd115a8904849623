"""Request and response bodies of the API (CONTRACT.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Email = Annotated[EmailStr, AfterValidator(lambda value: value.lower())]
Password = Annotated[str, Field(min_length=8, max_length=128)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignUp(StrictModel):
    name: Name
    email: Email
    password: Password


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    balance: int


class UserCreated(BaseModel):
    id: int
    name: str
    email: str
    accounts: list[AccountOut]
