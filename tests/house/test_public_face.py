"""The public face: a narrow top level, one face per other name, old paths that warn.

The top level's ``__all__`` holds at most 40 names; every name that left it (``MOVED``) is
still importable from the top level with a ``DeprecationWarning`` naming its new path and is
the very object its face exports; every public name is exported by exactly one face (a
module or subpackage directly under ``captum_coar``); the README and the tutorials import from
the top level only what its ``__all__`` holds; the API reference lists every public name at
the path it is imported from.
"""

import ast
import importlib
import json
import pkgutil
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

import captum_coar
from captum_coar import _deprecation

ROOT = Path(__file__).resolve().parents[2]


def _faces():
    """Public modules and subpackages directly under the package (the faces), imported."""
    found = {}
    for info in pkgutil.iter_modules(captum_coar.__path__):
        if info.name.startswith("_") or info.name in ("demo", "demo_model", "testing"):
            continue
        found[f"captum_coar.{info.name}"] = importlib.import_module(f"captum_coar.{info.name}")
    return found


def _public_names():
    return list(captum_coar.__all__) + list(captum_coar.MOVED)


def test_the_top_level_is_narrow_and_every_name_resolves_without_a_warning():
    assert len(captum_coar.__all__) <= 40
    assert len(set(captum_coar.__all__)) == len(captum_coar.__all__)
    assert not set(captum_coar.__all__) & set(captum_coar.MOVED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in captum_coar.__all__:
            getattr(captum_coar, name)
        namespace = {}
        exec("from captum_coar import *", namespace)  # noqa: S102 - the star import itself
    assert set(captum_coar.__all__) <= set(namespace)
    assert not set(captum_coar.MOVED) & set(namespace)


@pytest.mark.parametrize("name", sorted(captum_coar.MOVED))
def test_an_old_top_level_name_warns_with_its_new_path_and_is_the_same_object(name):
    module, new_name = _deprecation.new_path(captum_coar.MOVED[name], name)
    with pytest.warns(DeprecationWarning) as caught:
        old = getattr(captum_coar, name)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"captum_coar.{name} is deprecated" in message
    assert f"from {module} import {new_name}" in message
    assert _deprecation.REMOVED_IN in message
    assert caught[0].filename == __file__  # points at the caller, not at the package
    assert old is getattr(importlib.import_module(module), new_name)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{module}.{new_name}")):
        exec(f"from captum_coar import {name}", {})  # noqa: S102 - the old import statement


def test_an_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        captum_coar.no_such_name  # noqa: B018


def test_every_public_name_lives_at_exactly_one_face():
    faces = _faces()
    for name in _public_names():
        homes = [face for face, module in faces.items() if name in getattr(module, "__all__", ())]
        assert len(homes) == 1, f"{name} is exported by {homes}; it needs exactly one face"
        if name in captum_coar.MOVED:
            assert homes == [_deprecation.new_path(captum_coar.MOVED[name], name)[0]]


def test_the_old_module_utility_paths_warn():
    from captum_coar import _modules

    for name in ("is_hf_conv1d", "model_device", "result_dtype"):
        with pytest.warns(DeprecationWarning, match=f"captum_coar._modules import {name}"):
            value = getattr(importlib.import_module("captum_coar.components"), name)
        assert value is getattr(_modules, name)
    with pytest.warns(DeprecationWarning, match="captum_coar.ablation import check_expert"):
        from captum_coar.experts import check_expert_ablation
    assert check_expert_ablation is importlib.import_module("captum_coar.ablation"
                                                            ).check_expert_ablation


def _taught_imports():
    """``(where, module, name)`` of every ``from captum_coar... import name`` in the README's
    Python blocks and the tutorials' code cells."""
    sources = {"README.md": "\n".join(re.findall(r"```python\n(.*?)```",
                                                 (ROOT / "README.md").read_text(), re.S))}
    for path in sorted((ROOT / "tutorials").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        sources[path.name] = "\n".join("".join(c["source"]) for c in cells
                                       if c["cell_type"] == "code")
    found = []
    for where, text in sources.items():
        code = "\n".join(line for line in text.splitlines()
                         if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("captum_coar"):
                found += [(where, node.module, alias.name) for alias in node.names]
    return found


def test_the_readme_and_the_tutorials_use_no_deprecated_path():
    taught = _taught_imports()
    assert len(taught) > 40  # the parse found the imports
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for where, module, name in taught:
            assert hasattr(importlib.import_module(module), name), (where, module, name)
    top = {name for _, module, name in taught if module == "captum_coar"}
    assert top <= set(captum_coar.__all__)


def test_the_reference_documents_every_public_name_at_its_path():
    pytest.importorskip("sphinx")
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        public_names = importlib.import_module("public_names")
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    groups = public_names.public_groups()
    listed = [path for members in groups.values() for path, _ in members]
    expected = [f"captum_coar.{n}" for n in captum_coar.__all__] + [
        ".".join(_deprecation.new_path(face, n)) for n, face in captum_coar.MOVED.items()]
    assert sorted(listed) == sorted(expected)
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.rst"))
    for group, members in groups.items():
        assert not members or f".. public-names:: {group}" in pages, group


def test_the_recorder_returns_activations_under_its_new_name_and_the_old_one_warns():
    from torch import nn

    from captum_coar import linear_neurons
    from captum_coar.recording import ActivationRecorder

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(5, 3)
    with ActivationRecorder(linear_neurons(model, names=["0"])) as recorder:
        model(x)
        (first,) = recorder.activations()
        with pytest.warns(DeprecationWarning, match=r"ActivationRecorder.activations\(\)"):
            (again,) = recorder.collect()
    assert torch.equal(first, model[0](x)) and again is first
