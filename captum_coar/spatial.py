"""Finer components for conv nets: every filter at each listed row (or column) of its map.

Contract
--------
A conv filter is one component over the whole feature map; a trigger in a corner is detected
by filters that also draw the rest of the image. :func:`filters_at_rows` copies every group of
a set (conv filters: output site, units on axis 1 of ``(batch, channels, height, width)``
maps) to the given rows (``axis=2``) or columns (``axis=3``): each (filter, row) pair becomes
one component, labelled ``conv/filter[c]@r``, and gating it replaces that filter's activation
on that row only (with the group's ablation; :func:`captum_coar.positions.position_gate`
builds the gate, the row index counting on the map's own height, negative from the end).
Rows outside a map raise ``IndexError`` when the model runs. Every gate method accepts the
result. Weight edits refuse such components (a weight is shared by every row): apply them
with hooks (:func:`captum_coar.editing.apply_edit` with a hook ablation, or
:func:`captum_coar.ablate_persistently`); they cannot be exported as a ``state_dict``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ._checks import check_choice, fail
from .components import ComponentSet

__all__ = ["filters_at_rows"]


def filters_at_rows(components: ComponentSet, rows: Sequence[int], axis: int = 2) -> ComponentSet:
    """Every filter of ``components`` at each of ``rows`` on ``axis`` (2 rows, 3 columns)."""
    if not isinstance(components, ComponentSet):
        raise TypeError(f"`components` must be a ComponentSet; got {type(components).__name__}")
    check_choice("axis", str(axis), ("2", "3"))
    rows = tuple(rows)
    if not rows or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
        raise fail("rows", "a non-empty sequence of int rows (negative from the end)", rows)
    for group in components.groups:
        if group.site != "output" or group.unit_axis != 1 or group.positions:
            raise fail("components", "conv filters (output site, units on axis 1, no positions)",
                       group.module_name, "build them with ComponentSet.from_model(model,"
                       " kinds=('conv_filters',))")
    return ComponentSet(components.model, [replace(g, positions=rows, position_axis=int(axis))
                                           for g in components.groups])
