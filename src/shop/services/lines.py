"""What checkout works with: the lines asked for, and the order as it was placed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


@dataclass(frozen=True)
class Line:
    product_id: int
    quantity: int


@dataclass(frozen=True)
class PlacedItem:
    product_id: int
    quantity: int
    unit_price: int


@dataclass(frozen=True)
class PlacedOrder:
    """An order as checkout wrote it: what the response shows, without reading it back."""

    id: int
    status: str
    total: int
    created_at: datetime
    items: Sequence[PlacedItem]


class EarlierOrder(NamedTuple):
    """The order an earlier attempt of the same request placed (the same payment key)."""

    id: int
    total: int
    status: str


def merge_lines(lines: Iterable[Line]) -> list[Line]:
    """One line per product, in product id order (the lock order)."""
    merged: dict[int, int] = {}
    for line in lines:
        merged[line.product_id] = merged.get(line.product_id, 0) + line.quantity
    return [Line(product_id, quantity) for product_id, quantity in sorted(merged.items())]


def total_of(items: Iterable[PlacedItem]) -> int:
    return sum(item.quantity * item.unit_price for item in items)
