"""Optimised gates: continuous gates trained by gradient to change targets and spare references.

Contract
--------
:func:`optimise_gates` learns one logit ``theta[j]`` per component. Each step draws, for every
example row, a relaxed binary gate per component from the hard-concrete-style distribution
``g = sigmoid((theta + log u - log(1 - u)) / temperature)`` with ``u ~ U(0, 1)`` (seeded), gates
the model with :class:`~captum_coar.gates.ComponentGates` (``ablation`` says what gate 0 means;
the model is never written), and minimises

``mean_target softplus(-s * margin) + reference_weight * mean_reference softplus(-margin)
+ sparsity * sum_j (1 - sigmoid(theta[j]))``

with Adam, ``s = +1`` for ``direction="raise"`` and ``-1`` for ``"lower"``; margins are the
correct-class margins of the given labels (:class:`~captum_coar.outputs.Margin`). The noise
makes the learnt gates robust to being rounded to 0 or 1 (a deterministic continuous relaxation
tends to scale many components part-way, which rounding then breaks); the penalty pushes
components that do not help toward staying on. It is the mask optimisation of adversarial
neuron pruning (Wu & Wang, NeurIPS 2021) with the trigger's examples given instead of an
adversarial perturbation.

The result's ``order`` ranks components by their final logit, lowest (most surely ablated)
first, ties by index; :meth:`OptimisedGates.select` rounds to ``k`` components (the first
``k`` of the order). The rounded edit is an ordinary set of components: apply, export and undo
it with :func:`~captum_coar.editing.apply_edit` / :func:`~captum_coar.editing.edited_state_dict`.
The cost is counted with :class:`~captum_coar.forward_cost.ForwardCounter` (forward equivalents:
forwards + 2 x backwards). Examples first pass the shared preflight (model in eval mode,
finite inputs, labels in range).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_choice, check_float, check_int, check_integer_values
from ._modules import model_device
from ._preflight import preflight
from .ablation import AblationStrategy, fitted_ablation
from .components import ComponentSet
from .forward_cost import ForwardCounter
from .gates import ComponentGates
from .outputs import Margin

__all__ = ["OptimisedGates", "optimise_gates"]


@dataclass
class OptimisedGates:
    """Learnt gate logits and the order they give.

    Attributes:
        logits: ``(n_components,)`` final logits (float64, CPU); ``sigmoid`` = keep probability.
        order: components by increasing logit (int64).
        losses: the objective at each step.
        forward_equivalents: counted cost of the optimisation.
        settings: the arguments that shaped it.
    """

    logits: Tensor
    order: Tensor
    losses: List[float]
    forward_equivalents: int
    settings: Dict[str, Any] = field(default_factory=dict)

    def select(self, k: int) -> Tensor:
        """The ``k`` components to ablate (the first ``k`` of ``order``)."""
        k = check_int("k", k, minimum=0, maximum=self.order.numel())
        return self.order[:k].clone()

    def to_dict(self) -> Dict[str, Any]:
        return {"order": [int(i) for i in self.order], "logits": [float(v) for v in self.logits],
                "final_loss": self.losses[-1] if self.losses else None,
                "forward_equivalents": self.forward_equivalents, "settings": dict(self.settings)}


def _examples(name: str, x: Any, labels: Any) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"`{name}_inputs` must be a tensor with at least one example on dim 0;"
                         f" got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    y = check_integer_values(f"{name}_labels", labels).reshape(-1)
    if y.numel() != x.shape[0]:
        raise ValueError(f"`{name}_labels` must have one entry per example; got {y.numel()} for"
                         f" {x.shape[0]} examples")
    return y


def optimise_gates(forward_func: Callable[..., Any], components: ComponentSet,
                   target_inputs: Tensor, target_labels: Any, reference_inputs: Tensor,
                   reference_labels: Any, direction: str = "raise",
                   ablation: Union[str, AblationStrategy] = "weights", sparsity: float = 0.01,
                   reference_weight: float = 1.0, steps: int = 300, lr: float = 0.1,
                   temperature: float = 0.5, init: float = 3.0,
                   batch_size: Optional[int] = None, seed: int = 0) -> OptimisedGates:
    """Learn gates on the target / reference objective (see the module contract).

    Args:
        forward_func: the model, or a function of one input tensor that runs
            ``components.model``.
        components: the components to gate.
        target_inputs, target_labels: examples whose margin should rise (``"raise"``) or fall
            (``"lower"``), with class labels.
        reference_inputs, reference_labels: examples whose margin should stay positive.
        direction: ``"raise"`` or ``"lower"``.
        ablation: what gate 0 means (``"weights"`` for an edit exportable as a state_dict).
        sparsity: weight of the penalty per component ablated (in loss units).
        reference_weight: weight of the reference term.
        steps: Adam steps; lr: its learning rate.
        temperature: relaxation temperature (smaller = closer to binary gates).
        init: initial logit of every gate (3.0: kept with probability 0.95).
        batch_size: examples of each group per step (default: all of them).
        seed: seeds the gate noise and the batches.
    """
    if not isinstance(components, ComponentSet):
        raise TypeError(f"`components` must be a ComponentSet; got {type(components).__name__}")
    check_choice("direction", direction, ("lower", "raise"))
    y_t = _examples("target", target_inputs, target_labels)
    y_r = _examples("reference", reference_inputs, reference_labels)
    sparsity = check_float("sparsity", sparsity, low=0.0)
    reference_weight = check_float("reference_weight", reference_weight, low=0.0)
    steps = check_int("steps", steps, minimum=1)
    lr = check_float("lr", lr, low=0.0, low_open=True)
    temperature = check_float("temperature", temperature, low=0.0, low_open=True)
    init = check_float("init", init)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    margin = Margin()
    for name, x, y in (("target_inputs", target_inputs, y_t),
                       ("reference_inputs", reference_inputs, y_r)):
        preflight("optimise_gates", forward_func, components, x, y, None, margin, input_name=name)
    strategy = fitted_ablation(ablation, forward_func, components)
    device = model_device(components.model)
    n = components.n_components
    theta = torch.full((n,), float(init), device=device, requires_grad=True)
    optimiser = torch.optim.Adam([theta], lr=lr)
    generator = torch.Generator().manual_seed(int(seed))
    sign = 1.0 if direction == "raise" else -1.0
    n_t, n_r = target_inputs.shape[0], reference_inputs.shape[0]
    losses: List[float] = []
    with ForwardCounter(components.model) as cost, ComponentGates(components, strategy) as gates:
        for _ in range(steps):
            rows_t = _batch(n_t, batch_size, generator)
            rows_r = _batch(n_r, batch_size, generator)
            x = torch.cat([target_inputs[rows_t], reference_inputs[rows_r].to(target_inputs)])
            y = torch.cat([y_t[rows_t], y_r[rows_r]]).to(device)
            u = torch.rand(x.shape[0], n, generator=generator).clamp(1e-6, 1 - 1e-6).to(device)
            gates.values = torch.sigmoid((theta + torch.log(u) - torch.log1p(-u)) / temperature)
            m = margin(forward_func(x.to(device)), y)
            gates.check_all_ran()
            k_t = rows_t.numel()
            loss = (F.softplus(-sign * m[:k_t]).mean()
                    + reference_weight * F.softplus(-m[k_t:]).mean()
                    + sparsity * (1 - torch.sigmoid(theta)).sum())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        gates.values = None
    logits = theta.detach().to(torch.float64).cpu()
    order = torch.sort(logits, stable=True).indices
    return OptimisedGates(logits=logits, order=order, losses=losses,
                          forward_equivalents=int(cost.equivalents),
                          settings={"direction": direction, "sparsity": sparsity,
                                    "reference_weight": reference_weight, "steps": steps,
                                    "lr": lr, "temperature": temperature, "init": init,
                                    "batch_size": batch_size, "seed": int(seed),
                                    "ablation": repr(strategy)})


def _batch(n: int, batch_size: Optional[int], generator: torch.Generator) -> Tensor:
    if batch_size is None or batch_size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:batch_size]
