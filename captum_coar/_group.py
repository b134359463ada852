"""One group of units at one module site: the declaration every component set is made of.

Contract
--------
:class:`ComponentGroup` is a frozen dataclass naming a module, the site (``"output"``,
``"input"`` or ``"routing"``: :data:`SITES`), the axis that holds the units, their number and
size, and optionally token positions, a tuple-output index, the batch axis and a dictionary
whose latents are the units; it checks its own fields when made (``ValueError`` /
``TypeError`` naming the module and what is allowed). :data:`KINDS` is the selection
vocabulary and :data:`UNIT_KINDS` maps each unit word to its kind. :func:`group_record` is a
group's fields as JSON-ready dict (what fingerprints hash). The public face is
:mod:`captum_coar.components`; this module imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ["ComponentGroup", "SITES", "KINDS", "UNIT_KINDS", "group_record"]

SITES: Tuple[str, ...] = ("output", "input", "routing")
KINDS: Tuple[str, ...] = ("conv_filters", "linear_neurons", "attention_heads", "mlp_neurons",
                          "residual_stream", "moe_experts")
#: unit word of a group -> the selection kind it belongs to (custom words are their own kind)
UNIT_KINDS: Dict[str, str] = {"filter": "conv_filters", "neuron": "linear_neurons",
                              "head": "attention_heads", "cross_head": "attention_heads",
                              "mlp_neuron": "mlp_neurons", "residual": "residual_stream",
                              "expert": "moe_experts"}


@dataclass(frozen=True)
class ComponentGroup:
    """The units of one module at one site.

    Attributes:
        module_name: name of the module in ``model.named_modules()``.
        kind: label word for a unit, e.g. ``"filter"``, ``"neuron"``, ``"head"``.
        n_units: units along ``unit_axis`` (components = units x positions).
        site: ``"output"`` (the module's output), ``"input"`` (its first positional input)
            or ``"routing"`` (the routing weights a mixture-of-experts experts container
            receives, one unit per expert: :mod:`captum_coar.experts`).
        unit_axis: axis of the activation (batch is axis 0) that holds the units.
        unit_size: features per unit along ``unit_axis`` (``head_dim`` for heads).
        positions: token positions, each an int or a ``(name, per-example indices)`` pair;
            empty (the default) = one component per unit over all positions together.
        position_axis: the activation axis that holds positions (with ``positions``).
        output_index: for a module that returns a tuple, the element that is the site.
        batch_axis: the activation axis that holds the batch (1 for sequence-first
            ``(seq, batch, features)`` layouts). Hooks move it to axis 0 before anything else,
            so ``unit_axis`` and ``position_axis`` count in that batch-first view.
        dictionary: a :class:`~captum_coar.dictionaries.Dictionary` (sparse autoencoder or
            transcoder) whose latents are the units (kind ``"latent"``); the hooks then gate
            its latent vector, not the site's features (see :mod:`captum_coar.dictionaries`).

    Example:
        >>> from torch import nn
        >>> from captum_coar import ComponentGroup, ComponentSet
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> pairs = ComponentGroup("2", kind="pair", n_units=3, site="input", unit_size=2)
        >>> ComponentSet(model, [pairs]).labels        # input features [0, 2), [2, 4), [4, 6)
        ['2/pair[0]', '2/pair[1]', '2/pair[2]']
    """

    module_name: str
    kind: str
    n_units: int
    site: str = "output"
    unit_axis: int = -1
    unit_size: int = 1
    positions: Tuple[Any, ...] = ()
    position_axis: int = 1
    output_index: Optional[int] = None
    batch_axis: int = 0
    dictionary: Optional[Any] = None

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
        if int(self.batch_axis) < 0:
            raise ValueError(f"group {self.module_name!r}: batch_axis={self.batch_axis} must"
                             " count from the front (0 for batch-first, 1 for sequence-first)")
        object.__setattr__(self, "positions", _normalised_positions(self.module_name,
                                                                    self.positions))
        if self.positions and self.position_axis in (0, self.unit_axis):
            raise ValueError(
                f"group {self.module_name!r}: position_axis={self.position_axis} must differ"
                f" from the batch axis 0 and from unit_axis={self.unit_axis}")
        if self.dictionary is not None:
            self.dictionary.check_group(self)

    @property
    def width(self) -> int:
        """Number of features along ``unit_axis`` that the group covers."""
        return self.n_units * self.unit_size

    @property
    def n_positions(self) -> int:
        """Positions per unit (1 when the group declares none)."""
        return max(1, len(self.positions))

    @property
    def n_components(self) -> int:
        """Components in the group: units x positions."""
        return self.n_units * self.n_positions

    def position_name(self, slot: int) -> str:
        """The label of position ``slot``: the int, or the per-example position's name."""
        position = self.positions[slot]
        return str(position) if isinstance(position, int) else position[0]

    def label(self, index: int) -> str:
        """Label of component ``index`` of this group (position-major with positions)."""
        if not self.positions:
            return f"{self.module_name}/{self.kind}[{index}]"
        slot, unit = divmod(int(index), self.n_units)
        unit_part = self.kind if self.n_units == 1 else f"{self.kind}[{unit}]"
        return f"{self.module_name}/{unit_part}@{self.position_name(slot)}"

    @property
    def selection_kind(self) -> str:
        """The kind of :data:`KINDS` this group belongs to (its unit word when custom)."""
        return UNIT_KINDS.get(self.kind, self.kind)


def group_record(group: ComponentGroup) -> dict:
    """The group's fields as a dict (JSON-ready); ``dictionary`` only when the group has one, so
    groups without a dictionary keep the fingerprint they had before the field existed."""
    record = asdict(group)
    if record["dictionary"] is None:
        del record["dictionary"]
    return record


def _normalised_positions(module_name: str, positions: Any) -> Tuple[Any, ...]:
    """``positions`` as a hashable tuple of ints and ``(name, tuple of ints)`` pairs."""
    out: List[Any] = []
    names = set()
    for position in tuple(positions or ()):
        if isinstance(position, (int, torch.Tensor)) and not isinstance(position, bool) and (
                not isinstance(position, torch.Tensor) or position.dim() == 0):
            out.append(int(position))
            continue
        if (isinstance(position, (tuple, list)) and len(position) == 2
                and isinstance(position[0], str)):
            indices = torch.as_tensor(position[1])
            if indices.dim() != 1 or indices.is_floating_point() or indices.numel() == 0:
                raise ValueError(
                    f"group {module_name!r}: per-example position {position[0]!r} must hold one"
                    f" integer index per example (a 1-d integer tensor), got"
                    f" {tuple(indices.shape)} {indices.dtype}")
            out.append((position[0], tuple(int(i) for i in indices.tolist())))
            names.add(position[0])
            continue
        raise TypeError(
            f"group {module_name!r}: a position must be an int or a (name, per-example indices)"
            f" pair, got {position!r}")
    labels = [p if isinstance(p, int) else p[0] for p in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"group {module_name!r}: positions {labels} repeat a position")
    return tuple(out)
