"""Smoke run of the patching benchmark at its --quick sizes (tiny models trained into a
temporary cache, results in a temporary folder), so that it does not rot."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_patching_benchmark_quick(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.patching.run", "--quick",
                           "--threads", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "patching.json").read_text())
    assert set(result["tasks"]) == {"ioi", "recall"}
    for task in result["tasks"].values():
        for record in task["sets"].values():
            scores = record["scores"]
            # exact patching against itself, and every estimator's correlation in [-1, 1]
            assert scores["exact patching"]["pearson"] == pytest.approx(1.0)
            for name in ("AtP", "AtP*", "gate IG", "COAR"):
                value = scores[name]["pearson"]
                assert math.isnan(value) or -1.0 <= value <= 1.0
        # the grid has one row per residual site (embedding + every block), one column per
        # named position; the heads map one row per layer
        layers = task["model"]["config"]["model"]["n_layer"]
        assert len(task["tracing"]["grid"]) == layers + 1
        assert len(task["heads_map"]["grid"]) == layers
    assert result["speed"]["ratio"] > 0
    assert (tmp_path / "patching.md").is_file()
    for name in ("ioi_tracing", "ioi_heads", "recall_tracing", "recall_scatter"):
        assert (tmp_path / f"{name}.png").is_file()
