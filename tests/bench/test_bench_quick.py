"""The benchmark harness works end to end (numbers are not judged here: `make bench` does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)  # every scenario once, servers started one by one: ~2 min here
def test_quick_benchmark_run(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
    )
    results = json.loads((tmp_path / "latest.json").read_text())
    rows = results["scenarios"]
    report = (tmp_path / "latest.md").read_text()
    assert (tmp_path / "latest.png").stat().st_size > 0
    measured = [row for row in rows if "rps" in row]
    assert measured[0]["scenario"].startswith("floor") and measured[0]["rps"] > 0
    for row in rows:
        assert row["scenario"] in report
    for row in measured:
        assert row["rps"] > 0, row
        if row["scenario"].startswith("shop"):
            assert row["violations"] == [], row  # the shop never loses money or stock
            if "sign-up" not in row["scenario"]:
                assert row["non_2xx"] == 0, row
    # A process that kept serving a revoked session for 10 s would have failed the run.
    for window in results["revocation_windows"]:
        assert window["trials"] == 3 and window["p50_ms"] <= window["max_ms"], window
