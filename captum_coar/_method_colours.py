"""One colour per method, the same in every figure.

Contract
--------
:data:`METHOD_COLOURS` fixes the colour of each method of the package (matplotlib's tab10, in
the demo's order: COAR, leave-one-out, attribution patching, gradient x parameter, gate
integrated gradients, conductance, internal influence, random, AtP*, RelP), by lower-case name;
common short names (``"AtP"``, ``"exact"``, ``"IG"``) are read as the method they name.
:func:`method_colours` gives every name of one figure its colour: the fixed one, else one chosen
from the name's text (a CRC of it) among ten other colours, moved to the next free colour only
when another name of the same figure took it. matplotlib is not imported. The public face is
:mod:`captum_coar.visualization`, whose plots all use it.
"""

from __future__ import annotations

import zlib
from typing import Dict, Sequence

__all__ = ["METHOD_COLOURS", "method_colours"]

#: the package's methods, by lower-case name -> colour (tab10, in the demo's order)
METHOD_COLOURS: Dict[str, str] = {
    "coar": "#1f77b4", "leave-one-out": "#ff7f0e", "attribution patching": "#2ca02c",
    "gradient x parameter": "#d62728", "integrated gradients (gates)": "#9467bd",
    "conductance": "#8c564b", "internal influence": "#e377c2", "random (reference)": "#7f7f7f",
    "atp*": "#bcbd22", "relp": "#17becf"}
_ALIASES = {"atp": "attribution patching", "exact": "leave-one-out",
            "exact patching": "leave-one-out", "gate integrated gradients":
            "integrated gradients (gates)", "integrated gradients": "integrated gradients (gates)",
            "ig": "integrated gradients (gates)", "random": "random (reference)",
            "relevance patching": "relp", "atp star": "atp*"}
#: colours for other names (tab20b's dark shades, apart from the ones above)
_OTHER = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252",
          "#bd9e39", "#ad494a", "#a55194"]


def method_colours(names: Sequence[str]) -> Dict[str, str]:
    """The colour of each method in ``names``: the same in every figure, distinct in this one.

    Args:
        names: method names as the results hold them (case and surrounding spaces ignored).

    Returns:
        ``{name: colour}`` (``"#rrggbb"``): the fixed colour of a method of the package (see
        :data:`METHOD_COLOURS`), else one chosen from the name's text, moved to the next free
        colour when another name of ``names`` already took it.
    """
    chosen: Dict[str, str] = {}
    for name in names:
        key = name.strip().lower()
        key = _ALIASES.get(key, key)
        if key in METHOD_COLOURS:
            chosen[name] = METHOD_COLOURS[key]
    taken = set(chosen.values())
    for name in names:
        if name in chosen:
            continue
        start = zlib.crc32(name.strip().lower().encode())
        free = [_OTHER[(start + i) % len(_OTHER)] for i in range(len(_OTHER))]
        colour = next((c for c in free if c not in taken), free[0])
        chosen[name] = colour
        taken.add(colour)
    return chosen
