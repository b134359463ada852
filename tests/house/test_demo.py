"""The one-command demo runs end to end in its quick size and writes what it says."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from captum_coar import demo  # noqa: E402

EXPECTED_FILES = ["results.json", "results.md", "correlation_bars.png", "scatter_example0.png",
                  "attributions_example0.png", "topk_curves.png"]
METHODS = ["COAR", "leave-one-out", "attribution patching", "gradient x parameter",
           "integrated gradients (gates)", "conductance", "internal influence",
           "random (reference)"]


def test_quick_demo_runs_and_writes_outputs(tmp_path, capsys):
    assert demo.main(["--quick", "--output-dir", str(tmp_path / "out"), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| method | alpha=0.05 | alpha=0.1 | alpha=0.2 | time (s) |" in printed
    assert str((tmp_path / "out").resolve()) in printed
    for name in EXPECTED_FILES:
        path = tmp_path / "out" / name
        assert path.is_file() and path.stat().st_size > 500, name
        if name.endswith(".png"):
            assert path.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["correlation"]["methods"] == METHODS
    assert summary["settings"]["seed"] == 1 and summary["settings"]["quick"] is True
    means = dict(zip(METHODS, zip(*summary["correlation"]["mean"])))
    # Even the tiny quick model separates informed attributions from random ones.
    assert min(means["COAR"]) > 0.3 and min(means["leave-one-out"]) > 0.3
    assert max(abs(m) for m in means["random (reference)"]) < 0.4


def test_command_line_help():
    out = subprocess.run([sys.executable, "-m", "captum_coar.demo", "--help"],
                         capture_output=True, text=True, check=True)
    for option in ("--output-dir", "--seed", "--quick", "--alpha", "--n-masks", "--no-plots",
                   "--threads"):
        assert option in out.stdout
    assert "default 1" in out.stdout


def test_threads_default_is_one_and_negative_is_refused():
    assert demo.build_parser().parse_args([]).threads == 1
    bad = subprocess.run([sys.executable, "-m", "captum_coar.demo", "--threads", "-2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--threads must be 0" in bad.stderr
