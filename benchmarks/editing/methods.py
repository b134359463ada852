"""Component attributions for the editing benchmark, by four methods, with their cost.

Contract
--------
``attributions(method, model, components, x, y, n_masks, seed) -> (A, seconds, forwards)``:
``A`` is ``(len(x), N)`` with the shared sign (positive = the component raises the
correct-class margin of ``y``). Methods: ``"coar"`` (``ComponentAblationRegression``, weight
ablation, ``n_masks`` Bernoulli masks at alpha = 0.05, least squares), ``"leave_one_out"``
(``ComponentAblation``), ``"attribution_patching"`` (``ComponentAttributionPatching``) and
``"random"`` (standard normal numbers from ``seed``: a random ranking). ``forwards`` counts
example forwards (a backward as two).
"""

from __future__ import annotations

import time
from typing import Tuple

import torch
from torch import Tensor

from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAttributionPatching,
    ComponentSet,
)

METHODS = ("coar", "leave_one_out", "attribution_patching", "random")
ALPHA = 0.05


def attributions(method: str, model: torch.nn.Module, components: ComponentSet, x: Tensor,
                 y: Tensor, n_masks: int, seed: int = 0) -> Tuple[Tensor, float, int]:
    n, n_components = x.shape[0], components.n_components
    start = time.time()
    if method == "coar":
        coar = ComponentAblationRegression(model, components, ablation="weights")
        values = coar.attribute(x, target=y, n_masks=n_masks, ablation_fraction=ALPHA, seed=seed)
        forwards = n * (n_masks + 1)
    elif method == "leave_one_out":
        values = ComponentAblation(model, components).attribute(x, target=y)
        forwards = n * (n_components + 1)
    elif method == "attribution_patching":
        values = ComponentAttributionPatching(model, components).attribute(x, target=y)
        forwards = 3 * n
    elif method == "random":
        values = torch.randn(n, n_components, generator=torch.Generator().manual_seed(seed))
        forwards = 0
    else:
        raise ValueError(f"`method` must be one of {list(METHODS)}; got {method!r}")
    if isinstance(values, tuple):
        values = values[0]
    return values.detach().float().cpu(), time.time() - start, forwards
