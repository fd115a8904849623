"""What a test needs from the machine beyond Python: skipped without it, failed under CI."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_installed(missing: str | None) -> None:
    """``missing`` (what is not installed, and how to install it), or None: skip the calling
    test when something is missing, or fail it under ``CI=true``, where every suite must run."""
    if missing is None:
        return
    if IN_CI:
        pytest.fail(f"{missing}; CI=true requires it", pytrace=False)
    pytest.skip(missing)
