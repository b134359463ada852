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

Selectors for the common kinds live one layer up, in :mod:`captum_coar.selectors`
(:func:`conv_filters`, :func:`linear_neurons`, :func:`attention_heads`, :func:`mlp_neurons`);
:meth:`ComponentSet.from_model` is a face for them and selects by kind and by name pattern:
the selection layer registers its group builder here when it is imported
(:func:`register_group_selector`), so this module imports nothing above it. The package root
imports the selectors, so ``from_model`` works whenever ``captum_coar`` is imported.
:meth:`ComponentSet.subset` filters with the same kind vocabulary (``KINDS``): each unit word
maps to one kind (``filter`` -> ``conv_filters``, ``neuron`` -> ``linear_neurons``, ``head`` and
``cross_head`` -> ``attention_heads``, ``mlp_neuron`` -> ``mlp_neurons``, ``expert`` ->
``moe_experts``: a mixture-of-experts expert, site ``"routing"``, :mod:`captum_coar.experts`).
:meth:`ComponentSet.summary` prints one screen of groups and counts. Bad specifications raise
``ValueError`` / ``TypeError`` naming the module and what was expected.

Token positions: a group may also declare ``positions`` (on ``position_axis``, 1 for
``(batch, seq, features)`` activations). Each component is then one unit *at one position*,
numbered position-major (all units at the first position, then the next), labelled
``.../head[2]@-1``; an unlisted position is never gated. A position is an int (negative counts
from the end of the sequence) or a ``(name, per-example indices)`` pair, e.g.
``("subject_last", (3, 5, 4))`` with one index per example of the attributed batch
(:func:`check_example_positions` refuses another batch size). ``output_index=0`` makes the
first element of a tuple output the site (a transformer block's hidden states).
:mod:`captum_coar.positions` builds such groups.

Dictionary latents: a group may declare a ``dictionary`` (a sparse autoencoder or transcoder
trained on the site); its units are then the dictionary's latents, labelled
``.../latent[17]``, and the group's fields (with the dictionary's name and parameter hash)
enter :attr:`ComponentSet.fingerprint`. :mod:`captum_coar.dictionaries` builds such groups.

Weight layouts are explicit: a ``neuron`` of ``nn.Linear`` is row ``weight[j, :]``; a neuron
of Hugging Face's ``Conv1D`` (weight stored ``[in, out]``) is column ``weight[:, j]``; both
ablate output feature ``j``. A ``head`` ``h`` is the input slice
``[h * head_dim, (h + 1) * head_dim)`` of the projection.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._checks import check_instance, fail
from ._deprecation import moved_names
from ._group import KINDS, SITES, UNIT_KINDS, ComponentGroup, group_record
from ._modules import NamePatterns, name_filter, require_module

__all__ = [
    "ComponentGroup",
    "ComponentSet",
    "check_example_positions",
    "register_group_selector",
    "SITES",
    "KINDS",
]

#: (model, kinds, include, exclude) -> groups; set by :func:`register_group_selector`
GroupSelector = Callable[[nn.Module, Any, NamePatterns, NamePatterns], List["ComponentGroup"]]
_group_selector: Optional[GroupSelector] = None


def register_group_selector(selector: GroupSelector) -> None:
    """Install the function behind :meth:`ComponentSet.from_model`.

    :mod:`captum_coar.selectors` registers :func:`~captum_coar.selectors.select_groups` when it
    is imported; the data model stays below the selection layer (no import from here up).
    """
    global _group_selector
    if not callable(selector):
        raise fail("selector", "a callable (model, kinds, include, exclude) -> groups", selector)
    _group_selector = selector


class ComponentSet:
    """An ordered set of component groups bound to a model.

    Args:
        model: the model whose modules the groups name.
        groups: the groups, in the order their components are numbered.

    Raises:
        ValueError: no groups, an unknown module name, or the same (module, site) twice.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from captum_coar import ComponentSet
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> components = ComponentSet.from_model(model)       # conv filters and Linear neurons
        >>> components
        ComponentSet(7 components: 0:4 filters, 3:3 neurons)
        >>> components.labels[0], components.label(6)
        ('0/filter[0]', '3/neuron[2]')
        >>> components.split(torch.zeros(2, 7))["3"].shape    # the columns of one module
        torch.Size([2, 3])
        >>> neurons, columns = components.subset(kinds="linear_neurons")
        >>> columns
        tensor([4, 5, 6])
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
            check_instance("groups", group, ComponentGroup, "a sequence of ComponentGroup objects")
            require_module(modules, group.module_name)
            key = (group.module_name, group.site)
            if key in seen:
                raise ValueError(f"module {group.module_name!r} at site {group.site!r} is listed twice")
            seen.add(key)
        self.model = model
        self.groups: Tuple[ComponentGroup, ...] = tuple(groups)
        sizes = [g.n_components for g in self.groups]
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
        parts = ", ".join(f"{g.module_name}:{g.n_components} {g.kind}s" for g in self.groups[:4])
        more = f", ... ({len(self.groups)} groups)" if len(self.groups) > 4 else ""
        return f"ComponentSet({self.n_components} components: {parts}{more})"

    def __add__(self, other: "ComponentSet") -> "ComponentSet":
        if other.model is not self.model:
            raise ValueError(
                "cannot combine ComponentSets built on different models: a"
                f" {type(self.model).__name__} at {id(self.model):#x} and a"
                f" {type(other.model).__name__} at {id(other.model):#x}; build both on the same"
                " model object")
        return ComponentSet(self.model, self.groups + other.groups)

    @property
    def labels(self) -> List[str]:
        return [g.label(u) for g in self.groups for u in range(g.n_components)]

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
                if not 0 <= unit < g.n_components:
                    raise IndexError(
                        f"unit {unit} is out of range for {module_name!r}, which has"
                        f" {g.n_components} {g.kind}s"
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
    def subset(
        self,
        kinds: Union[None, str, Sequence[str]] = None,
        include: NamePatterns = None,
        exclude: NamePatterns = None,
    ) -> Tuple["ComponentSet", Tensor]:
        """The groups whose kind and module name match, as a new set, with the columns they
        occupy in this one.

        ``kinds`` uses :meth:`from_model`'s vocabulary (``"conv_filters"``,
        ``"linear_neurons"``, ``"attention_heads"``, ``"mlp_neurons"``, or a custom group's
        unit word); the unit words ``"filter"``, ``"neuron"``, ``"head"`` are read as the kind
        they belong to. ``sub, columns = components.subset(kinds="attention_heads")``: then
        ``attributions[:, columns]`` lines up with ``sub``, and a gate row ``g_sub`` of ``sub``
        embeds as ``full = ones; full[:, columns] = g_sub``.
        """
        wanted = None if kinds is None else {UNIT_KINDS.get(k, k) for k in
                                             ([kinds] if isinstance(kinds, str) else kinds)}
        if wanted is not None:
            allowed = set(KINDS) | {g.selection_kind for g in self.groups}
            unknown = sorted(wanted - allowed)
            if unknown:
                raise fail("kinds", f"kinds from {sorted(allowed)}", list(unknown))
        keep = name_filter(include, exclude)
        chosen = [p for p, g in enumerate(self.groups)
                  if (wanted is None or g.selection_kind in wanted) and keep(g.module_name)]
        if not chosen:
            raise ValueError(
                f"no group matches kinds={kinds!r}, include={include!r}, exclude={exclude!r};"
                f" groups are {[(g.module_name, g.selection_kind) for g in self.groups]}")
        columns = torch.cat([torch.arange(self.offsets[p], self.offsets[p + 1]) for p in chosen])
        return ComponentSet(self.model, [self.groups[p] for p in chosen]), columns

    def summary(self, print_it: bool = False) -> str:
        """One screen: the groups and component counts per kind, with first and last module.

        Returns the text (and prints it when ``print_it``).
        """
        rows: Dict[Tuple[str, str], List[ComponentGroup]] = {}
        for g in self.groups:
            rows.setdefault((g.selection_kind, g.kind), []).append(g)
        lines = [f"{type(self.model).__name__}: {self.n_components:,} components in"
                 f" {len(self.groups)} groups"]
        for (kind, unit), groups in rows.items():
            sizes = sorted({g.n_components for g in groups})
            per = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            span = groups[0].module_name + ("" if len(groups) == 1 else
                                            f" ... {groups[-1].module_name}")
            total = sum(g.n_components for g in groups)
            lines.append(f"  {kind:<16} {unit + 's':<12} {len(groups):>4} groups x {per:>6}"
                         f" = {total:>9,}  ({span})")
        text = "\n".join(lines)
        if print_it:
            print(text)
        return text

    def describe(self) -> List[dict]:
        return [group_record(g) for g in self.groups]

    @property
    def fingerprint(self) -> str:
        """A hash of the groups and of the shapes and types of the modules they name."""
        payload = []
        for g in self.groups:
            module = self.module(g)
            shapes = {k: list(v.shape) for k, v in module.named_parameters(recurse=False)}
            payload.append({"group": group_record(g), "type": type(module).__name__, "params": shapes})
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ----------------------------------------------------------------- selection
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        kinds: Union[None, str, Sequence[str]] = None,
        include: NamePatterns = None,
        exclude: NamePatterns = None,
        positions: Optional[Sequence[Any]] = None,
    ) -> "ComponentSet":
        """Select components by kind and by module-name pattern.

        Args:
            model: the model.
            kinds: any of ``"conv_filters"``, ``"linear_neurons"``, ``"attention_heads"``,
                ``"mlp_neurons"``, ``"residual_stream"`` (each transformer block's output
                vector), ``"moe_experts"`` (each routed expert of a mixture-of-experts
                block). None: heads + MLP neurons (+ routed experts) for a transformer with a
                Hugging Face style ``config`` (embeddings, ``lm_head``, classifier heads and
                q/k/v maps are left out); conv filters, Linear neurons and heads for any other
                model.
            include / exclude: glob patterns (``"layer1.*"``), a list of them, or a predicate
                on the module name. Heads and MLP neurons match on the name of the projection
                they feed (``h.0.attn.c_proj``, ``h.0.mlp.c_proj``).
            positions: token positions: every unit at each (see :mod:`captum_coar.positions`).

        Groups come in the model's module order. Linear maps that serve as attention output
        projections are left out of ``linear_neurons`` when ``attention_heads`` is selected.
        A selection of 50,000 components or more warns; :meth:`summary` shows what was taken.
        """
        if _group_selector is None:
            raise RuntimeError(
                "ComponentSet.from_model has no selection layer: captum_coar.selectors was not"
                " imported; import captum_coar (or captum_coar.selectors) first")
        groups = _group_selector(model, kinds, include, exclude)
        if positions is not None:
            groups = [replace(g, positions=tuple(positions)) for g in groups]
        return cls(model, groups)


def check_example_positions(components: ComponentSet, n_examples: int) -> None:
    """``ValueError`` unless every per-example position has one index per example."""
    for group in components.groups:
        for position in group.positions:
            if not isinstance(position, int) and len(position[1]) != n_examples:
                raise ValueError(
                    f"per-example position {position[0]!r} of {group.module_name!r} holds"
                    f" {len(position[1])} indices but the batch has {n_examples} examples;"
                    " give one index per example of the inputs being attributed")


#: module utilities that lived here until 0.2.0; the old paths warn until they are removed
__getattr__ = moved_names(__name__, {name: "captum_coar._modules" for name in
                                     ("is_hf_conv1d", "model_device", "result_dtype")})
