"""Schemathesis against a real `shop serve`, with every check it has, as three callers.

Nobody, a logged-in customer and the administrator each run Schemathesis's phases (examples,
coverage, fuzzing, and stateful sequences along the links it infers) over every operation of
the service's own OpenAPI document, as `schemathesis run --checks all` does: each response is
checked by every check this version offers (a 5xx; a status, content type, header or body the
document does not declare; valid data refused or invalid data accepted; an undeclared method
answered otherwise than 405 with the path's ``Allow``; a route that does not enforce the
session it declares; a resource gone after it was created, or there after it was deleted...).

The document is also checked in-process for what Schemathesis cannot see: the name of the
cookie the app sets, and which routes take which headers.
"""

from __future__ import annotations

import math
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case, engine
from schemathesis.auths import AuthContext
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events
from schemathesis.hooks import HookContext
from schemathesis.schemas import BaseSchema
from serving import SHOP, base_url, shop_env, shop_server
from shop_testing import make_settings

from shop.app import create_app

CUSTOMER = ("demo@example.com", "demo-password")
ADMIN = ("fuzz-admin@example.com", "fuzz-admin-password")
COOKIE = "shop_session"
#: examples per operation and phase: enough for the checks to find what they find, few enough
#: for CI on two cores
MAX_EXAMPLES = 50
#: Schemathesis's defaults for `positive_data_acceptance`
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

pytestmark = pytest.mark.timeout(600)


def operation(method: str, path: str, **checks: dict[str, Any]) -> dict[str, Any]:
    return {"include-method": method, "include-path": path, "checks": checks}


#: Outcomes of schema-valid data that no JSON Schema can rule out, operation by operation.
OPERATIONS = [
    # A valid card number the gateway declines is a 402, as is an account short of funds; a
    # card order of free products is a 422 (there is nothing to charge).
    operation(
        "POST",
        "/api/orders",
        positive_data_acceptance={"expected-statuses": [*ACCEPTED, "402", "422"]},
    ),
    operation(
        "POST",
        "/api/accounts/{account_id}/deposits",
        positive_data_acceptance={"expected-statuses": [*ACCEPTED, "402"]},
    ),
    # The same account on both sides is a 422: a rule between two fields.
    operation(
        "POST",
        "/api/transfers",
        positive_data_acceptance={"expected-statuses": [*ACCEPTED, "422"]},
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of the test's own, with the demo data and an administrator."""
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    env = shop_env(
        f"sqlite+aiosqlite:///{workdir / 'shop.db'}",
        SHOP_ADMIN_EMAIL=ADMIN[0],
        SHOP_ADMIN_PASSWORD=ADMIN[1],
        # The fuzzer fails many log-ins from one address, and the callers must still log in.
        SHOP_LOGIN_MAX_FAILURES_PER_ADDRESS="1000000",
        SHOP_LOGIN_MAX_FAILURES_PER_EMAIL="1000000",
        SHOP_LOGIN_MAX_FAILURES_PER_EMAIL_AND_ADDRESS="1000000",
    )
    subprocess.run([SHOP, "seed", "--demo"], cwd=workdir, env=env, check=True, timeout=60)
    process = shop_server(workdir, env).start()
    try:
        yield base_url(process)
    finally:
        process.stop()


@dataclass
class Identity:
    """A user's session cookie and its CSRF token, logged in on first use."""

    server: str
    email: str
    password: str
    _current: tuple[str, str] | None = field(default=None, init=False)

    def log_in(self) -> tuple[str, str]:
        response = httpx.post(
            f"{self.server}/api/session",
            json={"email": self.email, "password": self.password},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.cookies[COOKIE], response.json()["csrf_token"]

    def session(self) -> tuple[str, str]:
        if self._current is None:
            self._current = self.log_in()
        return self._current


def session_auth(identity: Identity) -> type:
    """Schemathesis's auth provider: the caller's session on every request it makes."""

    class SessionAuth:
        def get(self, case: Case, _context: AuthContext) -> tuple[str, str]:
            if (case.method.upper(), case.path) == ("DELETE", "/api/session"):
                # Logging out ends the session it is sent with: a session of its own.
                return identity.log_in()
            return identity.session()

        def set(self, case: Case, data: tuple[str, str], _context: AuthContext) -> None:
            cookie, csrf = data
            case.cookies = {**(case.cookies or {}), COOKIE: cookie}
            case.headers = {**(case.headers or {}), "X-CSRF-Token": csrf}

    return SessionAuth


def whole_numbers_as_integers(value: Any) -> Any:
    """JSON Schema counts ``2.0`` as an integer, and Schemathesis sends such values as valid
    integers; the API reads bodies strictly and refuses them, as it documents (422). No JSON
    Schema keyword can say so, so valid data is sent as the API reads it."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [whole_numbers_as_integers(item) for item in value]
    if isinstance(value, dict):
        return {key: whole_numbers_as_integers(item) for key, item in value.items()}
    return value


def load_schema(server: str, identity: Identity | None) -> BaseSchema:
    config = SchemathesisConfig.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "checks": {"enabled": True},
            "cache": {"enabled": False},
            "request-timeout": 30,
            "operations": OPERATIONS,
        }
    )
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", config=config)

    @schema.hook
    def map_body(_context: HookContext, body: Any) -> Any:
        return whole_numbers_as_integers(body)

    if identity is not None:
        schema.auth(refresh_interval=None)(session_auth(identity))
    return schema


@dataclass
class Finding:
    operation: str
    check: str
    title: str
    message: str
    code_sample: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.check}: {self.title}\n{self.message}\n{self.code_sample}"


@dataclass
class Report:
    operations: set[str] = field(default_factory=set)
    cases: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    findings: dict[tuple[str, str, str], Finding] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        checks = ", ".join(f"{name} {count}" for name, count in sorted(self.checks.items()))
        cases = ", ".join(f"{phase} {count}" for phase, count in self.cases.items())
        lines = [
            f"{len(self.operations)} operations, {self.cases.total()} cases ({cases}); "
            f"checks run: {checks}"
        ]
        lines += [f"error: {error}" for error in self.errors]
        lines += [f"--- {finding}" for finding in self.findings.values()]
        return "\n".join(lines)


def fuzz(schema: BaseSchema) -> Report:
    """Every phase and every check, the way `schemathesis run` runs them; one finding per
    operation, check and kind of failure."""
    report = Report()
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            if event.label:
                report.operations.add(event.label)
            report.cases[event.phase.value] += len(event.recorder.cases)
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    report.checks[node.name] += 1
                    if node.failure_info is None:
                        continue
                    failure = node.failure_info.failure
                    key = (failure.operation or event.label or "", node.name, failure.title)
                    report.findings.setdefault(
                        key, Finding(*key, failure.message, node.failure_info.code_sample)
                    )
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return report


@pytest.mark.parametrize("caller", ["anonymous", "customer", "admin"])
def test_every_check_passes(server: str, caller: str) -> None:
    identity = {
        "anonymous": None,
        "customer": Identity(server, *CUSTOMER),
        "admin": Identity(server, *ADMIN),
    }[caller]
    schema = load_schema(server, identity)
    report = fuzz(schema)
    print(f"schemathesis as {caller} (seed {schema.config.seed}): {report}")
    assert len(report.operations) == 17, report
    assert not report.findings and not report.errors, report


# --- the document -----------------------------------------------------------------------------


def document(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """The document of an app built as `shop serve` builds it (its database never opened)."""
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", **settings))
    return app.openapi()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            yield f"{method.upper()} {path}", op


@pytest.mark.parametrize(
    ("settings", "cookie"),
    [
        ({}, "shop_session"),
        ({"cookie_host_prefix": True, "cookie_secure": True}, "__Host-shop_session"),
    ],
)
def test_the_session_cookie_is_the_security_scheme_of_routes_that_need_a_user(
    tmp_path: Path, settings: dict[str, Any], cookie: str
) -> None:
    doc = document(tmp_path, **settings)
    assert doc["components"]["securitySchemes"] == {
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": cookie,
            "description": "The web session, set by logging in (`POST /api/session`).",
        }
    }
    anyone = {
        "POST /api/users",
        "POST /api/session",
        "GET /api/products",
        "GET /healthz",
        "GET /readyz",
    }
    for label, op in operations(doc):
        if label in anyone:
            assert "security" not in op, label
        else:
            assert op["security"] == [{"session": []}], label
            assert "401" in op["responses"], label


def test_the_headers_a_route_takes_and_sends_are_declared(
    tmp_path: Path,
) -> None:
    idempotent = {
        "POST /api/orders",
        "POST /api/transfers",
        "POST /api/accounts/{account_id}/deposits",
    }
    for label, op in operations(document(tmp_path)):
        headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
        unsafe = not label.startswith("GET ")
        needs_token = unsafe and label not in {"POST /api/users", "POST /api/session"}
        assert ("X-CSRF-Token" in headers) == needs_token, label
        assert ("403" in op["responses"]) == needs_token, label
        assert ("Idempotency-Key" in headers) == (label in idempotent), label
        if "503" in op["responses"]:
            assert op["responses"]["503"]["headers"]["Retry-After"]["required"], label
        else:
            assert label == "GET /healthz"
        for status, response in op["responses"].items():
            assert response["headers"]["X-Request-ID"]["required"], (label, status)
