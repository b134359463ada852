"""Sphinx configuration of the captum_coar documentation.

Build (from the repository root, with the ``docs`` extra installed)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The API reference is generated from ``captum_coar.__all__`` by the ``public_names``
extension in ``docs/_ext``: every public name lands on the page of its pipeline stage, and
the build fails when a name is missing from the reference. The notebooks in ``tutorials/``
are copied into ``docs/tutorials/`` and rendered by myst-nb with their stored outputs (they
are not executed here; the test suite executes them).
"""

from __future__ import annotations

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, ROOT)

import captum_coar  # noqa: E402

project = "captum_coar"
author = "the captum_coar developers"
copyright = "the captum_coar developers"
version = release = captum_coar.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "myst_nb",
    "public_names",
]

# Google-style docstrings ("Args:", "Returns:", "Raises:") throughout the package.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_class_signature = "separated"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False

# Notebooks are rendered from their stored outputs; the test suite is what runs them.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
html_theme_options = {"description": "Component attribution for PyTorch, as a Captum plugin",
                      "fixed_sidebar": True}
html_title = f"captum_coar {release}"


def _copy_tutorials() -> None:
    """Copy ``tutorials/*.ipynb`` into ``docs/tutorials`` (not committed) with an index page.

    The index is the tutorials' README followed by a hidden table of contents of the notebooks.
    """
    source, target = os.path.join(ROOT, "tutorials"), os.path.join(HERE, "tutorials")
    os.makedirs(target, exist_ok=True)
    wanted = sorted(name for name in os.listdir(source) if name.endswith(".ipynb"))
    for name in os.listdir(target):
        if name.endswith(".ipynb") and name not in wanted:
            os.remove(os.path.join(target, name))
    for name in wanted:
        src, dst = os.path.join(source, name), os.path.join(target, name)
        if (not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src)
                or os.path.getsize(dst) != os.path.getsize(src)):
            shutil.copy2(src, dst)
    with open(os.path.join(source, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    toc = "\n".join(["", "```{toctree}", ":hidden:", ""] + [name[:-6] for name in wanted]
                    + ["```", ""])
    index = os.path.join(target, "index.md")
    text = readme.rstrip() + "\n" + toc
    if not os.path.exists(index) or open(index, encoding="utf-8").read() != text:
        with open(index, "w", encoding="utf-8") as handle:
            handle.write(text)


_copy_tutorials()
