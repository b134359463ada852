"""Smoke run of the planted-backdoor editing suite at its --quick size, so it does not rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_editing_suite_quick(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.editing.suite", "--quick", "--out",
                           str(tmp_path), "--cache-dir", str(tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "editing_suite.json").read_text())
    (member,) = results["members"].values()
    assert set(member["methods"]) >= {"welch", "joint", "reestimate", "gates", "random", "auto"}
    # equal forward budget: re-estimation and gates within 10% of Welch's (COAR's) count
    costs = {name: member["methods"][name]["cost"] for name in ("welch", "reestimate", "gates")}
    assert all(abs(c / costs["welch"] - 1) < 0.10 for c in costs.values()), costs
    assert (tmp_path / "editing_suite.md").exists() and (tmp_path / "editing_suite.png").exists()
