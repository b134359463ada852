"""Components of a model, declared as groups of units at module sites.

Contract
--------
A *component* is one unit of one module's activation: an output channel of a convolution
(``filter``), an output feature of a linear map (``neuron``), or a slice of the input of an
attention output projection (``head``). A :class:`ComponentGroup` declares the units of one
module: the module's name in ``model.named_modules()``, the *site* (``"output"`` or
``"input"``), the activation axis that holds the units, the number of units and how many
features each unit spans along that axis (``unit_size``: 1 for filters and neurons,
``head_dim`` for heads). A :class:`ComponentSet` binds a model to an ordered list of groups and
gives every component a flat index ``0 .. n_components - 1`` (groups in order, units in
order within a group) and a stable label such as ``layer1.0.conv1/filter[17]``.

Selectors build sets for the common kinds: :func:`conv_filters`, :func:`linear_neurons`,
:func:`attention_heads`, and :meth:`ComponentSet.from_model` to select by kind and by name
pattern. Bad specifications raise ``ValueError`` / ``TypeError`` naming the module and what
was expected.

Weight layouts are explicit: a ``neuron`` of ``nn.Linear`` is row ``weight[j, :]``; a neuron
of Hugging Face's ``Conv1D`` (weight stored ``[in, out]``) is column ``weight[:, j]``; both
ablate output feature ``j``. A ``head`` ``h`` is the input slice
``[h * head_dim, (h + 1) * head_dim)`` of the projection.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

__all__ = [
    "ComponentGroup",
    "ComponentSet",
    "conv_filters",
    "linear_neurons",
    "attention_heads",
    "is_hf_conv1d",
    "SITES",
    "KINDS",
]

SITES = ("output", "input")
KINDS = ("conv_filters", "linear_neurons", "attention_heads")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PROJECTION_NAMES = ("out_proj", "o_proj", "c_proj", "proj")
_HEAD_COUNT_ATTRS = ("num_heads", "n_heads", "n_head", "num_attention_heads")

NamePatterns = Union[None, str, Sequence[str], Callable[[str], bool]]


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's ``Conv1D`` (a linear map whose weight is stored ``[in, out]``)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


@dataclass(frozen=True)
class ComponentGroup:
    """The units of one module at one site.

    Attributes:
        module_name: name of the module in ``model.named_modules()``.
        kind: label word for a unit, e.g. ``"filter"``, ``"neuron"``, ``"head"``.
        n_units: number of components in this group.
        site: ``"output"`` (the module's output) or ``"input"`` (its first positional input).
        unit_axis: axis of the activation (batch is axis 0) that holds the units.
        unit_size: features per unit along ``unit_axis`` (``head_dim`` for heads).
    """

    module_name: str
    kind: str
    n_units: int
    site: str = "output"
    unit_axis: int = -1
    unit_size: int = 1

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(
                f"group {self.module_name!r}: site={self.site!r} is not allowed; use one of {SITES}"
            )
        if int(self.n_units) < 1 or int(self.unit_size) < 1:
            raise ValueError(
                f"group {self.module_name!r}: n_units={self.n_units} and unit_size={self.unit_size}"
                " must both be positive integers"
            )
        if self.unit_axis == 0:
            raise ValueError(
                f"group {self.module_name!r}: unit_axis=0 is the batch axis; units must lie on"
                " another axis (e.g. 1 for conv channels, -1 for linear features)"
            )

    @property
    def width(self) -> int:
        """Number of features along ``unit_axis`` that the group covers."""
        return self.n_units * self.unit_size

    def label(self, unit: int) -> str:
        return f"{self.module_name}/{self.kind}[{unit}]"


class ComponentSet:
    """An ordered set of component groups bound to a model.

    Args:
        model: the model whose modules the groups name.
        groups: the groups, in the order their components are numbered.

    Raises:
        ValueError: no groups, an unknown module name, or the same (module, site) twice.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ComponentGroup]) -> None:
        groups = list(groups)
        if not groups:
            raise ValueError(
                "a ComponentSet needs at least one group; the selection matched no module"
                f" of model {type(model).__name__}"
            )
        modules = dict(model.named_modules())
        seen = set()
        for group in groups:
            if not isinstance(group, ComponentGroup):
                raise TypeError(f"groups must be ComponentGroup objects, got {type(group).__name__}")
            _require_module(modules, group.module_name)
            key = (group.module_name, group.site)
            if key in seen:
                raise ValueError(f"module {group.module_name!r} at site {group.site!r} is listed twice")
            seen.add(key)
        self.model = model
        self.groups: Tuple[ComponentGroup, ...] = tuple(groups)
        sizes = [g.n_units for g in self.groups]
        self.offsets: Tuple[int, ...] = tuple(int(sum(sizes[:i])) for i in range(len(sizes) + 1))

    # ----------------------------------------------------------------- size and labels
    @property
    def n_components(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return self.n_components

    def __iter__(self) -> Iterator[ComponentGroup]:
        return iter(self.groups)

    def __repr__(self) -> str:
        parts = ", ".join(f"{g.module_name}:{g.n_units} {g.kind}s" for g in self.groups[:4])
        more = f", ... ({len(self.groups)} groups)" if len(self.groups) > 4 else ""
        return f"ComponentSet({self.n_components} components: {parts}{more})"

    def __add__(self, other: "ComponentSet") -> "ComponentSet":
        if other.model is not self.model:
            raise ValueError("cannot combine ComponentSets built on different models")
        return ComponentSet(self.model, self.groups + other.groups)

    @property
    def labels(self) -> List[str]:
        return [g.label(u) for g in self.groups for u in range(g.n_units)]

    def label(self, index: int) -> str:
        group, unit = self.locate(index)
        return self.groups[group].label(unit)

    def module(self, group: Union[int, ComponentGroup]) -> nn.Module:
        """The module a group (or the group at position ``group``) names."""
        g = self.groups[group] if isinstance(group, int) else group
        return self.model.get_submodule(g.module_name)

    # ----------------------------------------------------------------- index maps
    def locate(self, index: int) -> Tuple[int, int]:
        """Map a flat component index to ``(group position, unit)``."""
        index = int(index)
        if not 0 <= index < self.n_components:
            raise IndexError(
                f"component index {index} is out of range; this set has {self.n_components}"
                " components (indices 0 .. n_components - 1)"
            )
        for position in range(len(self.groups)):
            if index < self.offsets[position + 1]:
                return position, index - self.offsets[position]
        raise AssertionError("unreachable")

    def index(self, module_name: str, unit: int, site: Optional[str] = None) -> int:
        """Map ``(module name, unit)`` to the flat component index."""
        for position, g in enumerate(self.groups):
            if g.module_name == module_name and (site is None or g.site == site):
                if not 0 <= unit < g.n_units:
                    raise IndexError(
                        f"unit {unit} is out of range for {module_name!r}, which has"
                        f" {g.n_units} {g.kind}s"
                    )
                return self.offsets[position] + int(unit)
        names = [g.module_name for g in self.groups]
        raise KeyError(f"no group for module {module_name!r}; groups are {names}")

    def group_slice(self, position: int) -> slice:
        return slice(self.offsets[position], self.offsets[position + 1])

    def split(self, values: Tensor) -> Dict[str, Tensor]:
        """Split a ``(..., n_components)`` tensor into ``{module_name: (..., n_units)}``."""
        if values.shape[-1] != self.n_components:
            raise ValueError(
                f"expected a tensor whose last axis has {self.n_components} components,"
                f" got shape {tuple(values.shape)}"
            )
        names = [g.module_name for g in self.groups]
        out: Dict[str, Tensor] = {}
        for position, g in enumerate(self.groups):
            key = g.module_name if names.count(g.module_name) == 1 else f"{g.module_name}@{g.site}"
            out[key] = values[..., self.group_slice(position)]
        return out

    # ----------------------------------------------------------------- identity
    def describe(self) -> List[dict]:
        return [asdict(g) for g in self.groups]

    @property
    def fingerprint(self) -> str:
        """A hash of the groups and of the shapes and types of the modules they name."""
        payload = []
        for g in self.groups:
            module = self.module(g)
            shapes = {k: list(v.shape) for k, v in module.named_parameters(recurse=False)}
            payload.append({"group": asdict(g), "type": type(module).__name__, "params": shapes})
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ----------------------------------------------------------------- selection
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        kinds: Sequence[str] = KINDS,
        include: NamePatterns = None,
        exclude: NamePatterns = None,
    ) -> "ComponentSet":
        """Select components by kind and by module-name pattern.

        Args:
            model: the model.
            kinds: any of ``"conv_filters"``, ``"linear_neurons"``, ``"attention_heads"``.
            include / exclude: glob patterns (``"layer1.*"``), a list of them, or a predicate
                on the module name. Heads match on the projection's name (``h.0.attn.c_proj``).

        Groups come in the model's module order. Linear maps that serve as attention output
        projections are left out of ``linear_neurons`` when ``attention_heads`` is selected.
        """
        if isinstance(kinds, str):
            kinds = (kinds,)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"kinds={list(kinds)!r} is not allowed; choose from {KINDS}")
        keep = _name_filter(include, exclude)
        groups: List[ComponentGroup] = []
        head_projections = _find_head_projections(model) if "attention_heads" in kinds else {}
        mha_out_projs = {f"{n}.out_proj" for n, m in model.named_modules()
                         if isinstance(m, nn.MultiheadAttention)}
        for name, module in model.named_modules():
            if "conv_filters" in kinds and isinstance(module, _CONV_TYPES) and keep(name):
                groups.append(_conv_group(name, module))
            if name in head_projections and keep(name):
                groups.append(_head_group(name, module, head_projections[name]))
            is_linear = isinstance(module, nn.Linear) or is_hf_conv1d(module)
            if ("linear_neurons" in kinds and is_linear and keep(name)
                    and name not in head_projections and name not in mha_out_projs):
                groups.append(_linear_group(name, module))
        if not groups:
            raise ValueError(
                f"no components of kinds {list(kinds)} matched include={include!r},"
                f" exclude={exclude!r} in model {type(model).__name__}"
            )
        return cls(model, groups)


# --------------------------------------------------------------------------- selectors
def conv_filters(model: nn.Module, names: Optional[Sequence[str]] = None) -> ComponentSet:
    """Every output channel of the named ``nn.Conv1d/2d/3d`` modules (all when ``names`` is None)."""
    modules = dict(model.named_modules())
    if names is None:
        return ComponentSet.from_model(model, kinds=("conv_filters",))
    groups = []
    for name in _as_list(names):
        module = _require_module(modules, name)
        if not isinstance(module, _CONV_TYPES):
            raise TypeError(
                f"module {name!r} is {type(module).__name__}; conv_filters expects"
                " nn.Conv1d, nn.Conv2d or nn.Conv3d"
            )
        groups.append(_conv_group(name, module))
    return ComponentSet(model, groups)


def linear_neurons(model: nn.Module, names: Optional[Sequence[str]] = None) -> ComponentSet:
    """Every output feature of the named ``nn.Linear`` or Hugging Face ``Conv1D`` modules."""
    modules = dict(model.named_modules())
    if names is None:
        return ComponentSet.from_model(model, kinds=("linear_neurons",))
    groups = []
    for name in _as_list(names):
        module = _require_module(modules, name)
        if not (isinstance(module, nn.Linear) or is_hf_conv1d(module)):
            raise TypeError(
                f"module {name!r} is {type(module).__name__}; linear_neurons expects nn.Linear"
                " or transformers' Conv1D"
            )
        groups.append(_linear_group(name, module))
    return ComponentSet(model, groups)


def attention_heads(
    model: nn.Module,
    names: Union[None, Sequence[str], Mapping[str, int]] = None,
    n_heads: Optional[int] = None,
) -> ComponentSet:
    """Attention heads as slices of the input of each attention output projection.

    Args:
        names: attention modules (``"h.0.attn"``, an ``nn.MultiheadAttention``) or their
            output projections (``"h.0.attn.c_proj"``, ``"blocks.0.attn.proj"``); a mapping
            ``{name: n_heads}`` gives head counts explicitly. None: every attention module
            found (one with a head-count attribute and an output projection child).
        n_heads: head count for names whose module does not say it.
    """
    modules = dict(model.named_modules())
    if names is None:
        found = _find_head_projections(model)
        if not found:
            raise ValueError(
                f"found no attention module in {type(model).__name__}: none has a head-count"
                f" attribute {_HEAD_COUNT_ATTRS} and an output projection named one of"
                f" {_PROJECTION_NAMES}; pass the projection names and n_heads explicitly"
            )
        return ComponentSet(model, [_head_group(n, modules[n], h) for n, h in found.items()])
    counts = dict(names) if isinstance(names, Mapping) else {n: n_heads for n in _as_list(names)}
    groups = []
    for name, count in counts.items():
        module = _require_module(modules, name)
        projection_name, projection, count = _resolve_projection(name, module, count)
        parent = modules.get(projection_name.rpartition(".")[0])
        if count is None and parent is not None:
            count = _head_count(parent)
        if count is None:
            raise ValueError(
                f"module {name!r} does not state its number of heads; pass n_heads=... or"
                " names={name: n_heads}"
            )
        groups.append(_head_group(projection_name, projection, int(count)))
    return ComponentSet(model, groups)


# --------------------------------------------------------------------------- helpers
def _as_list(names: Union[str, Sequence[str]]) -> List[str]:
    return [names] if isinstance(names, str) else list(names)


def _require_module(modules: Mapping[str, nn.Module], name: str) -> nn.Module:
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"no module named {name!r} in the model{hint}")


def _name_filter(include: NamePatterns, exclude: NamePatterns) -> Callable[[str], bool]:
    def matcher(patterns: NamePatterns, default: bool) -> Callable[[str], bool]:
        if patterns is None:
            return lambda name: default
        if callable(patterns):
            return patterns  # type: ignore[return-value]
        plist = _as_list(patterns)  # type: ignore[arg-type]
        return lambda name: any(fnmatch.fnmatchcase(name, p) for p in plist)

    inc, exc = matcher(include, True), matcher(exclude, False)
    return lambda name: bool(name) and inc(name) and not exc(name)


def _conv_group(name: str, module: nn.Module) -> ComponentGroup:
    return ComponentGroup(name, "filter", int(module.out_channels), "output", unit_axis=1)


def _linear_group(name: str, module: nn.Module) -> ComponentGroup:
    width = int(module.nf) if is_hf_conv1d(module) else int(module.out_features)
    return ComponentGroup(name, "neuron", width, "output", unit_axis=-1)


def _projection_width(name: str, module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    if is_hf_conv1d(module):
        return int(module.nx)
    raise TypeError(
        f"module {name!r} is {type(module).__name__}; an attention output projection must be"
        " nn.Linear or transformers' Conv1D"
    )


def _head_group(name: str, projection: nn.Module, n_heads: int) -> ComponentGroup:
    width = _projection_width(name, projection)
    if n_heads < 1 or width % n_heads:
        raise ValueError(
            f"module {name!r} has input width {width}, which {n_heads} heads do not divide;"
            " the head count must be a positive divisor of the projection's input width"
        )
    return ComponentGroup(name, "head", n_heads, "input", unit_axis=-1, unit_size=width // n_heads)


def _head_count(module: nn.Module) -> Optional[int]:
    for attr in _HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    return value if isinstance(value, int) else None


def _resolve_projection(
    name: str, module: nn.Module, count: Optional[int]
) -> Tuple[str, nn.Module, Optional[int]]:
    """Given an attention module or its projection, return (projection name, module, heads)."""
    if isinstance(module, nn.Linear) or is_hf_conv1d(module):
        return name, module, count
    for child in _PROJECTION_NAMES:
        projection = getattr(module, child, None)
        if isinstance(projection, nn.Linear) or (projection is not None and is_hf_conv1d(projection)):
            return f"{name}.{child}", projection, count or _head_count(module)
    raise TypeError(
        f"module {name!r} is {type(module).__name__}; attention_heads expects an attention"
        f" module with an output projection child named one of {_PROJECTION_NAMES}, or the"
        " projection itself (nn.Linear / Conv1D)"
    )


def _find_head_projections(model: nn.Module) -> Dict[str, int]:
    """Map projection name -> head count for every attention module found in ``model``."""
    found: Dict[str, int] = {}
    for name, module in model.named_modules():
        count = _head_count(module)
        if count is None or not name:
            continue
        for child in _PROJECTION_NAMES:
            projection = getattr(module, child, None)
            if isinstance(projection, nn.Linear) or (projection is not None and is_hf_conv1d(projection)):
                found[f"{name}.{child}"] = count
                break
    return found
