"""Card payments: the gateway protocol, an HTTP client, and the simulator."""

from __future__ import annotations

from .fake import FakeGateway, create_fake_gateway_app
from .gateway import ChargeResult, GatewayError, GatewayTimeout, PaymentGateway
from .http import HttpGateway
from .metered import GatewayMetrics, MeteredGateway


def build_gateway(
    setting: str, *, fake_latency_ms: int = 0, timeout: float = 5.0
) -> PaymentGateway:
    """``fake`` runs the simulator in-process; anything else is the base URL of a gateway."""
    if setting == "fake":
        return FakeGateway(latency_ms=fake_latency_ms)
    return HttpGateway(setting, timeout=timeout)


__all__ = [
    "ChargeResult",
    "FakeGateway",
    "GatewayError",
    "GatewayMetrics",
    "GatewayTimeout",
    "HttpGateway",
    "MeteredGateway",
    "PaymentGateway",
    "build_gateway",
    "create_fake_gateway_app",
]
