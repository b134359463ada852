"""Speed, part 5: ComponentConductance over all layers in one pass vs Captum per layer.

Contract
--------
``conductance_comparison(setup, batch, n_steps, repeats, device) -> dict``
    On setup A's ResNet and its 928 conv filters (13 conv layers), explains the target logit
    of ``batch`` test images: :class:`captum_coar.baselines.ComponentConductance` (every layer in one
    scaled batch and one backward; ``output="logit"``, Captum's target selection) against
    Captum's ``LayerConductance`` called once per conv layer and summed over each filter's
    positions, with the same ``n_steps`` and ``method`` (Gauss-Legendre). Reports the median
    times, the speed-up (Captum time over ours) and the largest absolute difference of the
    attributions (also relative to the largest attribution). There is no numeric target; the
    expected speed-up is about the number of layers.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks.speed_common import SetupA, agreement, measure, ratio  # noqa: E402


def conductance_comparison(setup: SetupA, batch: int, n_steps: int, repeats: int,
                           device: torch.device) -> Dict[str, Any]:
    """Part 5; see the module docstring."""
    from captum.attr import LayerConductance

    from captum_coar.baselines import ComponentConductance

    model, components = setup.model, setup.components
    x, y = setup.x[:batch], setup.y[:batch]

    def ours() -> torch.Tensor:
        return ComponentConductance(model, components).attribute(
            x, target=y, n_steps=n_steps, output="logit").detach()

    def captum_per_layer() -> torch.Tensor:
        columns = []
        for group in components.groups:
            layer = LayerConductance(model, components.module(group))
            attributions = layer.attribute(x, target=y, n_steps=n_steps)
            columns.append(attributions.detach().sum(dim=(2, 3)))
        return torch.cat(columns, dim=1)

    timings, results = measure({"ours": ours, "captum_per_layer": captum_per_layer}, repeats,
                               device)
    speed = ratio(timings["captum_per_layer"], timings["ours"])
    return {"model": "ResNetSmall (setup A)", "n_layers": len(components.groups),
            "n_components": components.n_components, "batch": x.shape[0], "n_steps": n_steps,
            "method": "gausslegendre", "output": "logit of the label",
            "ours": timings["ours"].to_dict(),
            "captum_per_layer": timings["captum_per_layer"].to_dict(),
            "speedup": speed["wall"], "speedup_cpu_time": speed["cpu"],
            "agreement": agreement(results["ours"], results["captum_per_layer"])}
