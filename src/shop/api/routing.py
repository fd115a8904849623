"""RequestRoute: an API route that hands its endpoint the Request and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel


class RequestRoute(APIRoute):
    """For the hottest read routes: the endpoint takes the Request and returns a Response.

    FastAPI's dependency solver reads the query string, the headers and the cookies of every
    request, whether the route declares any parameter or not, and wraps the endpoint in its
    validation and serialisation: a fifth of an authenticated ``GET /api/session`` in-process
    (bench/README.md). This route skips all of that and keeps the rest of an APIRoute: its
    OpenAPI entry (response model, responses, tags), the app's exception handlers, the body
    limit. Nothing is solved, so the endpoint may declare nothing but the Request (no
    dependencies, no parameters: checked when the route is built, since a CSRF check given as
    a dependency would otherwise silently not run), and its response model is documented, not
    checked: the endpoint encodes its own response.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        declared = (
            dependant.dependencies,
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
        )
        if any(declared) or dependant.request_param_name is None:
            raise TypeError(
                f"{self.path}: a RequestRoute endpoint takes exactly one parameter, the Request "
                "(no dependencies, no parameters): nothing else would be solved"
            )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """``model`` as the response, as is: FastAPI validates and encodes a returned model again
    against the route's response model, which the route documents but need not re-check."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")
