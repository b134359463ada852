"""The part every benchmark program shares: the ``sys.path`` bootstrap and the command line.

Contract:

- Importing this module puts the repository root first on ``sys.path`` (once), so that a
  benchmark run as a script (``python benchmarks/speed.py``) can import ``benchmarks.*`` and
  the checkout's ``captum_coar``. A script does this before its other imports with::

      if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
          import _harness  # noqa: F401

  A module run with ``python -m benchmarks.<family>.run`` needs nothing: the root is the
  working directory, already on the path.
- :func:`command_line` builds the parser with the options every benchmark spells the same
  way (``--quick``, ``--threads``, ``--out``, ``--device``), each asked for by keyword with
  the script's own default, so a script keeps its exact command line; the description is the
  first line of the script's docstring. Options of one benchmark only are added by the
  script to the returned parser.
- Nothing here imports torch or the package: it is safe to import first.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

_UNSET = object()


def bootstrap() -> None:
    """Put the repository root first on ``sys.path`` unless it is already there."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def command_line(doc: Optional[str], *, quick: Optional[str] = None, threads: object = _UNSET,
                 threads_help: Optional[str] = None, out: object = _UNSET,
                 out_help: Optional[str] = None,
                 device: Optional[str] = None) -> argparse.ArgumentParser:
    """The benchmark's parser, with the shared options it asks for.

    Args:
        doc: the script's module docstring; its first line is the description.
        quick: help text of ``--quick`` (a flag: the CI smoke size); None leaves it out.
        threads: default of ``--threads`` (an int, or None for torch's own choice); left out
            when not given.
        threads_help: help text of ``--threads``.
        out: default of ``--out`` (the results folder; None lets the script choose); left out
            when not given.
        out_help: help text of ``--out``.
        device: default of ``--device`` (``"cpu"`` or ``"cuda"``); None leaves it out.

    Returns:
        An :class:`argparse.ArgumentParser` to which the script adds its own options.
    """
    description = (doc or "").strip().splitlines()[0] if (doc or "").strip() else None
    parser = argparse.ArgumentParser(description=description)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    if threads is not _UNSET:
        parser.add_argument("--threads", type=int, default=threads, help=threads_help)
    if out is not _UNSET:
        parser.add_argument("--out", default=out, help=out_help)
    if device is not None:
        parser.add_argument("--device", default=device, help="cpu or cuda (default cpu)")
    return parser


bootstrap()
