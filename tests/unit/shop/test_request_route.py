"""RequestRoute: the endpoint gets the Request alone, and a route that declares more is refused."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel

from shop.api.routing import RequestRoute


class Greeting(BaseModel):
    hello: str


async def greet(request: Request) -> Response:
    return Response(f'{{"hello": "{request.url.path}"}}', media_type="application/json")


def _app(endpoint: object, **kwargs: object) -> FastAPI:
    router = APIRouter()
    router.add_api_route(
        "/greet",
        endpoint,  # type: ignore[arg-type]
        methods=["GET"],
        response_model=Greeting,
        route_class_override=RequestRoute,
        **kwargs,  # type: ignore[arg-type]
    )
    app = FastAPI()
    app.include_router(router)
    return app


async def test_the_endpoint_answers_and_the_schema_keeps_its_response_model() -> None:
    app = _app(greet, responses={401: {}})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/greet")).json() == {"hello": "/greet"}
        operation = (await client.get("/openapi.json")).json()["paths"]["/greet"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Greeting"}
    assert "401" in operation["responses"]


async def _needs_a_token(request: Request) -> None:
    raise AssertionError("never solved")


async def with_query(request: Request, page: int) -> Response:
    return Response()


async def without_request() -> Response:
    return Response()


@pytest.mark.parametrize(
    ("endpoint", "kwargs"),
    [
        (greet, {"dependencies": [Depends(_needs_a_token)]}),
        (with_query, {}),
        (without_request, {}),
    ],
    ids=["route dependency", "query parameter", "no request"],
)
def test_a_route_that_declares_more_than_the_request_is_refused(
    endpoint: object, kwargs: dict[str, object]
) -> None:
    # Nothing would solve these, so a CSRF check given as a dependency would silently not run.
    with pytest.raises(TypeError, match="exactly one parameter, the Request"):
        _app(endpoint, **kwargs)
