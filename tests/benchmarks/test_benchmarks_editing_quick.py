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
    # equal forward budget, counted: the gates within 1% of Welch's (COAR's) count;
    # re-estimation pays each COAR call's fixed part (the full pass, probes) once a round,
    # 5 rounds of 30 masks here (about 2% more at the full size's 200)
    costs = {name: member["methods"][name]["cost"] for name in ("welch", "reestimate", "gates")}
    assert abs(costs["gates"] / costs["welch"] - 1) < 0.01, costs
    assert 1.0 <= costs["reestimate"] / costs["welch"] < 1.25, costs
    assert (tmp_path / "editing_suite.md").exists() and (tmp_path / "editing_suite.png").exists()
