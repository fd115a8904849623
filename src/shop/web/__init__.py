"""The storefront: one page whose script talks to the JSON API like any other client."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def storefront() -> HTMLResponse:
    html = (HERE / "templates" / "index.html").read_text()
    return HTMLResponse(html, headers=SECURITY_HEADERS)


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")
