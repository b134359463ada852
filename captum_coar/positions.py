"""Components at token positions: heads, MLP neurons and the residual stream, per position.

Contract
--------
Activation patching in language models localises a behaviour in space *and* in the sequence:
a head at the last token, the residual stream of layer ``l`` at the subject's last token (the
causal-tracing grid). A :class:`~captum_coar.components.ComponentGroup` with ``positions``
makes each (unit, position) pair one component; every gate method (leave-one-out, COAR, AtP,
AtP*, gate IG, :class:`~captum_coar.interop.GatedForward`) then gates that unit at that
position only, and ablating it equals patching it by hand at that position.

- :func:`at_positions` copies every group of a set to the given positions: ints (negative
  count from the end of the sequence) and ``(name, indices)`` pairs with one index per
  example (e.g. ``("subject_last", subject_last_index)``).
- :func:`residual_stream` declares the residual stream: one component per transformer block
  (its whole output hidden vector; the first element when a block returns a tuple) at each
  position; with ``positions=None`` every position of ``seq_len``.
- :func:`position_gate` builds, inside the gate hook, the full activation-shaped gate of a
  positional group: 1 at every position the group does not list, the component's gate at the
  (row's) position it lists. Positions outside the sequence raise ``IndexError`` naming the
  group and the sequence length; nothing is clipped.
- :func:`patching_grid` reshapes one example's attributions over a positional set into a
  ``(groups x positions)`` grid (layers x positions for the residual stream) with labels.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._transformers import find_attention
from .components import ComponentGroup, ComponentSet

__all__ = ["at_positions", "residual_stream", "residual_group", "position_gate",
           "patching_grid", "transformer_blocks"]


def at_positions(components: ComponentSet, positions: Sequence[Any]) -> ComponentSet:
    """The same groups, each component taken at every one of ``positions`` (see module)."""
    if not positions:
        raise ValueError("positions is empty; give token positions (ints or (name, indices))")
    return ComponentSet(components.model,
                        [replace(g, positions=tuple(positions)) for g in components.groups])


def transformer_blocks(model: nn.Module) -> List[str]:
    """Names of the transformer blocks, in order: the numbered modules holding attention."""
    names: List[str] = []
    for site in find_attention(model):
        parts = site.module_name.split(".")
        block = next((".".join(parts[:i + 1]) for i in range(len(parts) - 1, -1, -1)
                      if parts[i].isdigit()), None)
        if block is None:
            raise ValueError(
                f"attention module {site.module_name!r} is not inside a numbered block"
                " (e.g. model.layers.3); declare residual groups by hand:"
                " ComponentGroup(block_name, 'residual', 1, unit_size=hidden_size,"
                " positions=..., output_index=0)")
        if block not in names:
            names.append(block)
    if not names:
        raise ValueError(
            f"found no attention module in {type(model).__name__}, so no transformer blocks;"
            " declare residual groups by hand with ComponentGroup(block_name, 'residual', 1,"
            " unit_size=hidden_size, positions=..., output_index=0)")
    return names


def residual_group(model: nn.Module, block: str, hidden_size: Optional[int] = None,
                   positions: Sequence[Any] = ()) -> ComponentGroup:
    """The residual stream after ``block``: its whole output vector, one unit."""
    if hidden_size is None:
        config = getattr(model, "config", None)
        hidden_size = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model")
                            if isinstance(getattr(config, k, None), int)), None)
        if hidden_size is None:
            raise ValueError(f"cannot read the hidden size of {type(model).__name__} from a"
                             " config; pass hidden_size=...")
    return ComponentGroup(block, "residual", 1, unit_size=int(hidden_size),
                          positions=tuple(positions), output_index=0)


def residual_stream(model: nn.Module, positions: Optional[Sequence[Any]] = None,
                    seq_len: Optional[int] = None, hidden_size: Optional[int] = None,
                    blocks: Optional[Sequence[str]] = None) -> ComponentSet:
    """The residual stream after every block, one component per (block, position).

    Args:
        model: a transformer (Hugging Face or any model with numbered blocks of attention).
        positions: ints and ``(name, indices)`` pairs; None = every position ``0 ..
            seq_len - 1`` when ``seq_len`` is given, else one component per block over all
            positions together.
        seq_len: the sequence length, for ``positions=None``.
        hidden_size: the block output width (default: the config's ``hidden_size`` /
            ``n_embd`` / ``d_model``).
        blocks: block module names (default: :func:`transformer_blocks`).

    A component is the block's whole output vector at one position: ablating it with
    ``baselines=`` replaces that position's hidden state by the baseline's (causal tracing).

    Example:
        >>> from torch import nn
        >>> from captum_coar import residual_stream
        >>> layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        >>> encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        >>> stream = residual_stream(encoder, blocks=["layers.0", "layers.1"], hidden_size=8,
        ...                          positions=[-1])         # each block's output at the last token
        >>> stream.labels
        ['layers.0/residual@-1', 'layers.1/residual@-1']
    """
    if positions is None and seq_len is not None:
        positions = list(range(int(seq_len)))
    names = list(blocks) if blocks is not None else transformer_blocks(model)
    return ComponentSet(model, [residual_group(model, name, hidden_size, positions or ())
                                for name in names])


@lru_cache(maxsize=256)
def _index_table(indices: Tuple[int, ...]) -> Tensor:
    """A per-example position list as a tensor, built once (the gate hook runs every pass)."""
    return torch.tensor(indices, dtype=torch.long)


def _resolved(group: ComponentGroup, slot: int, rows: int, seq_len: int,
              example_index: Optional[Tensor], device: torch.device) -> Tensor:
    """The sequence index of position ``slot`` for each of ``rows`` rows."""
    position = group.positions[slot]
    if isinstance(position, int):
        index = position + seq_len if position < 0 else position
        if not 0 <= index < seq_len:
            raise IndexError(
                f"position {position} of {group.module_name!r} is outside the sequence of"
                f" length {seq_len} (allowed: {-seq_len} .. {seq_len - 1})")
        return torch.full((rows,), index, dtype=torch.long, device=device)
    name, indices = position
    table = _index_table(indices).to(device)
    examples = (torch.arange(rows, device=device) if example_index is None
                else example_index.to(device=device, dtype=torch.long))
    if examples.numel() != rows or bool((examples >= table.numel()).any()):
        raise IndexError(
            f"per-example position {name!r} of {group.module_name!r} has {table.numel()}"
            f" indices but the batch refers to example {int(examples.max())}; give one index"
            " per example of the attributed inputs")
    resolved = table[examples]
    if bool(((resolved < -seq_len) | (resolved >= seq_len)).any()):
        raise IndexError(f"per-example position {name!r} of {group.module_name!r} holds indices"
                         f" outside the sequence of length {seq_len}")
    return torch.where(resolved < 0, resolved + seq_len, resolved)


def position_gate(gate: Tensor, group: ComponentGroup, activation: Tensor,
                  example_index: Optional[Tensor]) -> Tensor:
    """Gate ``(rows, n_positions * n_units)`` -> a tensor broadcastable to ``activation``.

    Unlisted positions get 1 (kept). Differentiable in ``gate``.
    """
    ndim = activation.dim()
    pos_axis, unit_axis = group.position_axis % ndim, group.unit_axis % ndim
    rows, seq_len = activation.shape[0], activation.shape[pos_axis]
    if gate.shape[0] == 1 and rows > 1:
        gate = gate.expand(rows, -1)
    if gate.shape[0] != rows:
        raise ValueError(
            f"gates have {gate.shape[0]} rows but the activation at {group.module_name!r} has"
            f" batch size {rows}; give one gate row per row of the batch (or a single row)")
    full = torch.ones(rows, seq_len, group.n_units, dtype=gate.dtype, device=gate.device)
    row_index = torch.arange(rows, device=gate.device)
    for slot in range(group.n_positions):
        index = _resolved(group, slot, rows, seq_len, example_index, gate.device)
        unit_gates = gate[:, slot * group.n_units:(slot + 1) * group.n_units]
        full = full.index_put((row_index, index), full[row_index, index] * unit_gates)
    if group.unit_size > 1:
        full = full.repeat_interleave(group.unit_size, dim=2)
    if pos_axis > unit_axis:
        full = full.transpose(1, 2)
    shape = [1] * ndim
    shape[0], shape[pos_axis], shape[unit_axis] = rows, seq_len, group.width
    return full.reshape(shape)


def patching_grid(components: ComponentSet, attributions: Tensor
                  ) -> Tuple[Tensor, List[str], List[str]]:
    """One example's attributions ``(n_components,)`` as a ``(rows, positions)`` grid.

    Rows are (group, unit) pairs (one per block for the residual stream, one per head for
    heads), columns the positions shared by every group. Returns ``(grid, row_labels,
    column_labels)``.
    """
    values = torch.as_tensor(attributions)
    if values.dim() != 1 or values.shape[0] != components.n_components:
        raise ValueError(
            f"patching_grid takes one example's attributions, shape ({components.n_components},);"
            f" got {tuple(values.shape)}; index the example first (attributions[i])")
    positions = components.groups[0].positions
    if not positions or any(g.positions != positions for g in components.groups):
        raise ValueError("patching_grid needs every group at the same token positions (build"
                         " the set with at_positions or residual_stream)")
    rows, labels = [], []
    for index, group in enumerate(components.groups):
        block = values[components.group_slice(index)].reshape(group.n_positions, group.n_units)
        for unit in range(group.n_units):
            rows.append(block[:, unit])
            labels.append(group.module_name if group.n_units == 1
                          else f"{group.module_name}/{group.kind}[{unit}]")
    columns = [components.groups[0].position_name(s) for s in range(len(positions))]
    return torch.stack(rows), labels, columns
