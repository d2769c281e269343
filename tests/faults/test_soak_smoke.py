"""benchmarks/soak.py, briefly: it runs, survives its kills, and reports no integrity error and
no leak (the real soak is `python benchmarks/soak.py`, 60 s by default)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

SOAK = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_soak_smoke() -> None:
    res = subprocess.run([sys.executable, str(SOAK), "--seconds", "4.5", "--kill-every", "0.25",
                          "--seed", "6"], capture_output=True, text=True, timeout=120, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert "integrity errors 0, leaks 0: PASS" in last, res.stdout
    assert " 0 kills" not in last
