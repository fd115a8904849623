"""CSRF protection for cookie sessions: unsafe methods must echo the session's token.

The token travels in the ``X-CSRF-Token`` header (or a ``csrf_token`` form field for plain HTML
forms) and is compared in constant time. A request without a live session has nothing to
forge, so it passes here and meets the route's own authentication instead.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from .dependencies import WebSessionDep

HEADER = "x-csrf-token"
FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


async def require_csrf_token(request: Request, websession: WebSessionDep) -> None:
    """Dependency: 403, before anything changes, for a missing or wrong token.

    Give it as a route's (or router's) ``dependencies=[Depends(require_csrf_token)]``: those
    run before the route's own parameters are solved, so the check comes first.
    """
    if request.method in SAFE_METHODS:
        return
    if not websession.had_cookie or not websession.is_live:
        return
    sent = request.headers.get(HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(_FORMS):
        value = (await request.form()).get(FORM_FIELD)
        sent = value if isinstance(value, str) else None
    expected = websession.csrf_token or ""
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(403, "Missing or wrong CSRF token (send it in X-CSRF-Token).")
