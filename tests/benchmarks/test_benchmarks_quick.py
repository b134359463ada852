"""Smoke runs of the benchmark programs at their --quick sizes, so they do not rot.

They train tiny models (cached in benchmarks/cache/, which git ignores) and fall back to
scikit-learn's digits when Fashion-MNIST is not installed; results go to a temporary folder.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick",
                           "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_paper_table_quick(tmp_path):
    _run("paper_table.py", tmp_path, "--no-progress", "--no-plots")
    results = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert results, "the paper table wrote no results"
    assert list(tmp_path.glob("*.md"))


@pytest.mark.slow
def test_speed_quick(tmp_path):
    _run("speed.py", tmp_path)
    assert list(tmp_path.glob("*.json")) and list(tmp_path.glob("*.md"))
