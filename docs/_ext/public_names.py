"""Sphinx extension: the API reference of every public name, grouped in pipeline order.

The public names are the top level's ``captum_coar.__all__`` (at most 40, what the README and
tutorials teach; documented as ``captum_coar.<name>``) and every name of
``captum_coar.MOVED``, documented at its one face (``captum_coar.solvers.Ridge``), which is
where it is imported from. ``.. public-names:: <group>`` expands to a summary table and the
full autodoc entry of every public name in that group. A name belongs to the group of the
module that defines it (see :data:`GROUPS`); a name from a module that no group lists joins the
group of the name before it (top-level names first, in pipeline order), so names added to the
package appear in the reference without editing the docs. ``.. moved-names::`` is the table of
old top-level names and their faces. When the build has read every page,
:func:`check_every_name_documented` warns (an error under ``-W``) about any public name that is
not in the reference at its path.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

PACKAGE = "captum_coar"
logger = logging.getLogger(__name__)

#: (group, defining modules) in pipeline order. A module entry ``m`` matches ``m`` and its
#: submodules; the most specific entry wins.
GROUPS: Sequence[Tuple[str, Sequence[str]]] = (
    ("package", ("captum_coar",)),
    ("components", ("captum_coar.components", "captum_coar._group", "captum_coar.selectors",
                    "captum_coar.positions")),
    ("ablation", ("captum_coar.ablation", "captum_coar.gates", "captum_coar.recording",
                  "captum_coar._attention_patch")),
    ("outputs", ("captum_coar.outputs", "captum_coar.language_outputs")),
    ("engine", ("captum_coar.engine", "captum_coar._engine", "captum_coar._inputs")),
    ("coar", ("captum_coar.coar", "captum_coar.sampling")),
    ("solvers", ("captum_coar.solvers", "captum_coar.stores")),
    ("processes", ("captum_coar.coar.shards", "captum_coar.coar.distributed",
                   "captum_coar.coar._fingerprint", "captum_coar.coar._identity")),
    ("baselines", ("captum_coar.baselines", "captum_coar.interop", "captum_coar._compat")),
    ("evaluation", ("captum_coar.evaluation", "captum_coar._evaluation_results")),
    ("patching", ("captum_coar.patching", "captum_coar.patching_plots")),
    ("plots", ("captum_coar.visualization",)),
    ("editing", ("captum_coar.editing", "captum_coar.editing_results", "captum_coar.edits")),
)
GROUP_NAMES = [name for name, _ in GROUPS]


def _defining_module(name: str, obj: Any, modules: Dict[str, Any]) -> str:
    """The module that defines ``obj`` (for plain values: the module whose ``__all__`` has it)."""
    module = getattr(obj, "__module__", None)
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
        if isinstance(module, str) and module.startswith(PACKAGE):
            return module
    if name.startswith("__"):
        return PACKAGE
    for module_name, module_obj in sorted(modules.items(), key=lambda kv: -kv[0].count(".")):
        if module_name != PACKAGE and name in getattr(module_obj, "__all__", ()):
            return module_name
    return module if isinstance(module, str) else PACKAGE


def _group_of_module(module: str) -> Optional[str]:
    best, depth = None, -1
    for group, prefixes in GROUPS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = group, prefix.count(".")
    return best


def _submodules() -> Dict[str, Any]:
    package = importlib.import_module(PACKAGE)
    found = {PACKAGE: package}
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        if info.name.startswith(PACKAGE + ".demo"):
            continue
        try:
            found[info.name] = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional dependencies may be missing
            continue
    return found


def public_paths() -> List[Tuple[str, str, Any]]:
    """``(name, documented path, object)`` of every public name: the top level's ``__all__``
    (path ``captum_coar.<name>``), then the moved names at their faces."""
    package = importlib.import_module(PACKAGE)
    found = [(name, f"{PACKAGE}.{name}", getattr(package, name)) for name in package.__all__]
    for name, face in package.MOVED.items():
        module, _, new_name = face.partition(":")
        new_name = new_name or name
        found.append((new_name, f"{module}.{new_name}",
                      getattr(importlib.import_module(module), new_name)))
    return found


def public_groups() -> Dict[str, List[Tuple[str, Any]]]:
    """``{group: [(documented path, object), ...]}`` for every public name."""
    modules = _submodules()
    groups: Dict[str, List[Tuple[str, Any]]] = {name: [] for name in GROUP_NAMES}
    previous = "package"
    for name, path, obj in public_paths():
        module = _defining_module(name, obj, modules)
        group = _group_of_module(module)
        if group is None or (group == "package" and not name.startswith("__")):
            group = previous
        groups[group].append((path, obj))
        previous = group if group != "package" else previous
    return groups


def _directive_for(obj: Any) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


class PublicNames(SphinxDirective):
    """``.. public-names:: group`` -- summary table and autodoc entries of one group."""

    required_arguments = 1

    def run(self) -> List[nodes.Node]:
        group = self.arguments[0]
        if group not in GROUP_NAMES:
            raise self.error(f"unknown group {group!r}; groups are {GROUP_NAMES}")
        members = public_groups()[group]
        lines = [f".. currentmodule:: {PACKAGE}", ""]
        if not members:
            lines += ["No public names in this group yet.", ""]
        else:
            lines += [".. autosummary::", "   :nosignatures:", ""]
            # relative to the current module (autosummary refuses the module's own prefix)
            lines += [f"   {path[len(PACKAGE) + 1:]}" for path, _ in members] + [""]
        for path, obj in members:
            directive = _directive_for(obj)
            lines.append(f".. {directive}:: {path}")
            if directive in ("autoclass", "autoexception"):
                lines += ["   :members:", "   :show-inheritance:"]
            lines.append("")
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<public-names {group}>"),
                                self.content_offset, container, match_titles=False)
        return container.children


class MovedNames(SphinxDirective):
    """``.. moved-names::`` -- the old top-level names and the one face each now lives at."""

    def run(self) -> List[nodes.Node]:
        package = importlib.import_module(PACKAGE)
        lines = [".. list-table::", "   :header-rows: 1", "", "   * - old (warns until removed)",
                 "     - import it from"]
        for name, face in sorted(package.MOVED.items(), key=lambda kv: (kv[1], kv[0].lower())):
            module, _, new_name = face.partition(":")
            lines += [f"   * - ``{PACKAGE}.{name}``",
                      f"     - :py:obj:`{module}.{new_name or name}`"]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines + [""], source="<moved-names>"),
                                self.content_offset, container, match_titles=False)
        return container.children


def check_every_name_documented(app: Any, env: Any) -> None:
    """Warn about every public name without an entry in the reference at its path."""
    documented = set(env.get_domain("py").objects)
    missing = [path for _, path, _ in public_paths() if path not in documented]
    if missing:
        logger.warning("public names missing from the API reference: %s (each group page in"
                       " docs/api/ must hold a '.. public-names::' directive)",
                       ", ".join(missing), type="captum_coar", subtype="reference")


def setup(app: Any) -> Dict[str, Any]:
    app.add_directive("public-names", PublicNames)
    app.add_directive("moved-names", MovedNames)
    app.connect("env-check-consistency", check_every_name_documented)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
