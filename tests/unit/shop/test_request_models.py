"""The request bodies, against arbitrary JSON: a value either is one, or is a ValidationError.

FastAPI hands a request model whatever JSON the client sent, parsed: any other exception than
pydantic's ValidationError would be a 500 instead of a 422. A value that validates round-trips:
dumped as JSON and read again, it is the same model (what the shop keeps is what it was sent).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shop.api import schemas
from shop.api.session import Login

#: every model a request body is read into
MODELS: list[type[BaseModel]] = [
    Login,
    *(
        model
        for model in vars(schemas).values()
        if isinstance(model, type)
        and issubclass(model, schemas.StrictModel)
        and model is not schemas.StrictModel
    ),
]
FIELD_NAMES = sorted({name for model in MODELS for name in model.model_fields})

#: what JSON text can carry once parsed, lone surrogates and NUL included ("\ud800", "\u0000")
text = st.text(st.characters(codec=None) | st.characters(categories=["Cs"]) | st.just("\x00"))
atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-1, max_value=2**31),
    st.floats(),
    text,
    st.emails(),
    st.from_regex(r"[0-9]{10,20}", fullmatch=True),
    st.sampled_from(["card", "account", "Ada Lovelace", "a good password", " "]),
)
json_values = st.recursive(
    atoms,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | text, children, max_size=6)
    ),
    max_leaves=25,
)


def from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a model's JSON Schema (the few keywords the request models use): mostly
    valid ones, for the round trip to be exercised; each field now and then any JSON value."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of(*(from_schema(s, defs) for s in schema.get("anyOf", schema.get("oneOf"))))
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**40)) + 1)
        return st.integers(low, schema.get("maximum", 2**40))
    if kind == "string":
        if schema.get("format") == "email":
            return st.emails()
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength"))
    if kind == "array":
        items = from_schema(schema["items"], defs)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=3)
    if kind == "object":
        properties = {
            name: from_schema(value, defs) | json_values
            for name, value in schema["properties"].items()
        }
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {name: value for name, value in properties.items() if name in required},
            optional={name: value for name, value in properties.items() if name not in required},
        )
    return st.none() if kind == "null" else json_values


def shaped_like(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    """JSON values of the model's own shape, and objects of any of the models' fields."""
    schema = model.model_json_schema()
    return from_schema(schema, schema.get("$defs", {})) | st.dictionaries(
        st.sampled_from(FIELD_NAMES), json_values, max_size=6
    )


VALID: dict[type[BaseModel], Any] = {
    Login: {"email": "Ada@Example.com", "password": "x"},
    schemas.SignUp: {"name": " Ada ", "email": "ada@example.com", "password": "a good password"},
    schemas.ProductIn: {"sku": "MUG-1", "name": "Mug", "price": 0, "stock": 1_000_000_000},
    schemas.ProductPatch: {},
    schemas.TransferIn: {"from_account_id": 1, "to_account_id": 2**31 - 1, "amount": 1},
    schemas.DepositIn: {"amount": 100_000_000, "card_number": "4242424242424242"},
    schemas.ItemIn: {"product_id": 1, "quantity": 10_000},
    schemas.CardPayment: {"method": "card", "card_number": "424242424242"},
    schemas.AccountPayment: {"method": "account", "account_id": 7},
    schemas.OrderIn: {
        "items": [{"product_id": 1, "quantity": 2}],
        "payment": {"method": "account", "account_id": 7},
    },
}


def test_every_request_model_is_here() -> None:
    assert set(MODELS) == set(VALID)


def validate_or_refuse(model: type[BaseModel], value: Any) -> BaseModel | None:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        assert exc.errors(), exc
        return None


def assert_round_trips(instance: BaseModel) -> None:
    model = type(instance)
    sent = instance.model_dump_json()
    assert model.model_validate(json.loads(sent)) == instance
    assert model.model_validate_json(sent) == instance


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_the_valid_examples_validate_and_round_trip(model: type[BaseModel]) -> None:
    instance = validate_or_refuse(model, VALID[model])
    assert instance is not None
    assert_round_trips(instance)


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
@settings(max_examples=200, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_is_a_model_or_a_validation_error(
    model: type[BaseModel], data: st.DataObject
) -> None:
    value = data.draw(json_values | shaped_like(model))
    instance = validate_or_refuse(model, value)
    event("valid" if instance is not None else "refused")
    if instance is not None:
        assert_round_trips(instance)
