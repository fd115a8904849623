"""The cart, kept in the web session: one key per product (``cart:<id>`` → quantity).

One key per product, so that two tabs changing the cart at the same time both count: the
library merges a session's changes key by key, and adds up concurrent increments.
"""

from __future__ import annotations

from fastapi_atomic.websession import WebSession

PREFIX = "cart:"
#: as many lines as one order takes
MAX_LINES = 100
MAX_QUANTITY = 10_000


class CartError(ValueError):
    pass


class Cart:
    def __init__(self, websession: WebSession) -> None:
        self.websession = websession

    @property
    def quantities(self) -> dict[int, int]:
        """Product id → quantity, in product id order.

        A quantity is read as at most MAX_QUANTITY: the limit is checked against the cart as
        the request read it, and two tabs adding at once both count (their increments add up
        in the store), so a line can be stored above it; it is shown, and ordered, as capped.
        """
        if not self.websession.is_live:
            return {}
        lines = {}
        for key, value in self.websession.items():
            if key.startswith(PREFIX) and isinstance(value, int) and value > 0:
                lines[int(key.removeprefix(PREFIX))] = min(value, MAX_QUANTITY)
        return dict(sorted(lines.items()))

    @property
    def count(self) -> int:
        return sum(self.quantities.values())

    def add(self, product_id: int, quantity: int) -> None:
        current = self.quantities
        if product_id not in current and len(current) >= MAX_LINES:
            raise CartError(f"A cart holds at most {MAX_LINES} different products.")
        if current.get(product_id, 0) + quantity > MAX_QUANTITY:
            raise CartError(f"A cart holds at most {MAX_QUANTITY:,} of one product.")
        self.websession.increment(PREFIX + str(product_id), quantity)

    def set(self, product_id: int, quantity: int) -> None:
        """A new quantity for a line; 0 removes it."""
        if quantity <= 0:
            self.remove(product_id)
        elif product_id in self.quantities:
            self.websession[PREFIX + str(product_id)] = min(quantity, MAX_QUANTITY)

    def remove(self, product_id: int) -> None:
        key = PREFIX + str(product_id)
        if self.websession.is_live and key in self.websession:
            del self.websession[key]

    def clear(self) -> None:
        for product_id in self.quantities:
            self.remove(product_id)

    def replace(self, quantities: dict[int, int]) -> None:
        self.clear()
        for product_id, quantity in quantities.items():
            self.add(product_id, quantity)

    def encode(self) -> str:
        """The cart as a checkout form carries it (``3:2,5:1``): what the buyer saw."""
        return encode(self.quantities)


def encode(quantities: dict[int, int]) -> str:
    return ",".join(f"{product_id}:{quantity}" for product_id, quantity in quantities.items())


def decode(text: str) -> dict[int, int]:
    """A checkout form's cart; CartError for anything but ``id:quantity`` pairs in bounds."""
    lines: dict[int, int] = {}
    for part in filter(None, text.split(",")):
        product_id, _, quantity = part.partition(":")
        if not (part.isascii() and product_id.isdigit() and quantity.isdigit()) or len(part) > 20:
            raise CartError("The cart in this form cannot be read.")
        pid, qty = int(product_id), int(quantity)
        if not (0 < pid < 2**31 and 0 < qty <= MAX_QUANTITY) or pid in lines:
            raise CartError("The cart in this form cannot be read.")
        lines[pid] = qty
    if len(lines) > MAX_LINES:
        raise CartError("The cart in this form cannot be read.")
    return dict(sorted(lines.items()))
