"""The project's layering rules, checked on every run."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from shop.app import create_app
from shop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_library_never_imports_the_shop() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_never_commit() -> None:
    """Only the unit of work commits; a service that commits breaks atomicity and retries."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "shop" / "services").rglob("*.py")
        if ".commit()" in path.read_text()
    ]
    assert offenders == []


def _routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)


def _router_dependencies(routes: Iterable[Any]) -> Iterator[Any]:
    """What ``include_router(..., dependencies=[...])`` added to every route of a router."""
    for route in routes:
        context = getattr(route, "include_context", None)
        if context is not None:
            yield from (depends.dependency for depends in context.dependencies)
            yield from _router_dependencies(route.original_router.routes)


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def test_every_dependency_runs_on_the_event_loop() -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: a thread hand-off per request
    that, under load, costs more than the dependency and fights the event loop for the GIL."""
    app = create_app(Settings(database_url="sqlite+aiosqlite://", secret_keys=["k" * 32]))
    routes = list(_routes(app.router.routes))
    assert any(route.name == "place_order" for route in routes)
    calls = [d.call for route in routes for d in _dependencies(route.dependant)]
    calls += list(_router_dependencies(app.router.routes))
    offenders = sorted(
        {
            call.__qualname__
            for call in calls
            if call is not None
            and not inspect.iscoroutinefunction(call)
            and not inspect.isasyncgenfunction(call)
            and not inspect.iscoroutinefunction(type(call).__call__)
        }
    )
    assert offenders == []


def test_routes_are_fastapis_own() -> None:
    """No custom route class: every route gets FastAPI's dependency solver, its response
    validation and app.dependency_overrides."""
    app = create_app(Settings(database_url="sqlite+aiosqlite://", secret_keys=["k" * 32]))
    routes = list(_routes(app.router.routes))
    assert {type(route) for route in routes} == {APIRoute}
    api = [route for route in routes if route.endpoint.__module__ != "shop.api.health"]
    api = [route for route in api if route.endpoint.__module__.startswith("shop.api.")]
    unchecked = [
        route.name for route in api if route.response_model is None and route.status_code != 204
    ]
    assert len(api) > 10 and unchecked == []
