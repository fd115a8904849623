"""The layering rules of ARCHITECTURE.md, checked on every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
