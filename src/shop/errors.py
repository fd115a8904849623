"""Domain errors raised by services; the API turns each into its status code and detail."""

from __future__ import annotations


class ShopError(Exception):
    status_code = 400
    #: headers its answer carries, as JSON or as a page (``Retry-After`` on a block)
    headers: dict[str, str] = {}

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ShopError):
    status_code = 404


class Conflict(ShopError):
    status_code = 409


class Unprocessable(ShopError):
    status_code = 422


class PaymentDeclined(ShopError):
    status_code = 402


class CardDeclined(PaymentDeclined):
    """The card's issuer said no; ``code`` is the gateway's reason (``insufficient_funds``),
    for the pages to say in words what the API's detail names."""

    def __init__(self, code: str | None) -> None:
        super().__init__(f"The card was declined ({code or 'declined'}).")
        self.code = code


class GatewayUnavailable(ShopError):
    status_code = 503


class Forbidden(ShopError):
    status_code = 403


class NotAuthenticated(ShopError):
    status_code = 401


class TooManyAttempts(ShopError):
    status_code = 429
