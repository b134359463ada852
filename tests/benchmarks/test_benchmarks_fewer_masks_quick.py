"""Smoke runs of the fewer-masks benchmarks at their --quick sizes (tiny models, results in a
temporary folder), so they do not rot. A file of its own, so that the test command's workers
(``--dist loadfile``) run it beside the other benchmark smoke runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick",
                           "--threads", "1", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert out.with_suffix(".md").is_file()
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fewer_masks_quick(tmp_path):
    result = _run("fewer_masks.py", tmp_path / "fewer.json", "--setups", "vit")
    points = result["setups"]["vit"]["points"]
    estimators = {p["estimator"] for p in points}
    assert "prior lasso: attribution patching (held-out 20%, refit)" in estimators
    assert all(-1.0 <= p["correlation"] <= 1.0 for p in points)


@pytest.mark.slow
def test_fewer_masks_shared_quick(tmp_path):
    result = _run("fewer_masks_shared.py", tmp_path / "shared.json")
    assert "ridge_auto" in result["correlation"] and result["asymptote"] > 0.5


@pytest.mark.slow
def test_fewer_masks_default_quick(tmp_path):
    result = _run("fewer_masks_default.py", tmp_path / "default.json")
    digits = result["setups"]["digits"]
    assert any(p["estimator"].startswith("new default") for p in digits["points"])
    assert digits["adaptive"]["reason"] in ("converged", "max_masks")
    assert all(0.0 <= v <= 1.0 for c in digits["coverage"] for k, v in c.items()
               if k != "m_over_N")
