"""Contract checks for the extension points, runnable on a user's own subclass.

Contract
--------
Each ``check_*`` function runs one extension point through the behaviour the rest of the
package relies on, on small models and data it builds itself, and raises ``AssertionError``
naming the first broken rule (it returns None when every rule holds). The package's own test
suite runs every built-in implementation through them; run your own subclass the same way:

>>> from captum_coar.testing import check_ablation_strategy
>>> check_ablation_strategy(MyAblation())                                     # doctest: +SKIP

- :func:`check_ablation_strategy`: fitting through :func:`~captum_coar.ablation.fitted_ablation`,
  gate 1 reproduces the model exactly, gate 0 on one component replaces exactly that
  component's slice (and by the strategy's replacement), results do not depend on batching,
  ``describe()`` is JSON.
- :func:`check_output_function`: one float per row, each row's value depends only on that row,
  deterministic, ``describe()`` is JSON.
- :func:`check_sampler`: boolean ``(rows, N)`` keep masks, row ``r`` depends only on
  ``(seed, r)``, seeds differ, the ablated share matches ``ablation_fraction``.
- :func:`check_solver`: recovers an exactly linear problem, float64 ``(n, N)`` coefficients,
  the same fit from statistics accumulated in one chunk or several.
- :func:`check_attribution_method`: ``(batch, N)`` attributions, Captum's tuple convention,
  no hook left behind, parameters and buffers untouched, batch invariance, and (with
  ``exact=True``) the known answer on a model that is exactly additive in its components.

Store checks live with the stores' own tests (their on-disk format is verified there).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor, nn

from ._engine import evaluate_masks
from .ablation import AblationStrategy, fitted_ablation
from .components import ComponentSet
from .gates import ComponentGates
from .outputs import OutputFunction, resolve_output
from .recording import ActivationRecorder
from .sampling import MaskSampler
from .selectors import conv_filters, linear_neurons
from .solvers import FitResult, Solver, StreamingSolver, SufficientStatistics

__all__ = ["check_ablation_strategy", "check_output_function", "check_sampler", "check_solver",
           "check_attribution_method", "AdditiveNet", "SmallConvNet", "INPUT_SHAPE"]


class AdditiveNet(nn.Module):
    """Logits = ``readout(hidden(x))``: exactly additive in the ``hidden`` neurons.

    Ablating neuron ``j`` under ``"weights"`` ablation (its activation replaced by its bias)
    changes logit ``c`` by ``-readout.weight[c, j] * (hidden(x)_j - hidden.bias_j)``.
    """

    def __init__(self, n_in: int = 5, n_hidden: int = 7, n_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():  # seeded weights; the caller's global RNG is untouched
            torch.manual_seed(seed)
            self.hidden = nn.Linear(n_in, n_hidden)
            self.readout = nn.Linear(n_hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.hidden(x))

    def effects(self, x: Tensor, target: Tensor, baselines: Optional[Tensor] = None) -> Tensor:
        """Each neuron's exact contribution to the target logit, ``(batch, n_hidden)``: against
        its bias (weight ablation), or against its activation on paired ``baselines``."""
        with torch.no_grad():
            reference = self.hidden.bias if baselines is None else self.hidden(baselines)
            return self.readout.weight[target] * (self.hidden(x) - reference)


class SmallConvNet(nn.Module):
    """Conv (with bias) -> BatchNorm -> ReLU -> conv (no bias) -> pooled linear head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():  # seeded weights; the caller's global RNG is untouched
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
            self.head = nn.Linear(6, 3)
            self.bn.running_mean = torch.empty(4).uniform_(-0.2, 0.2)
            self.bn.running_var = torch.empty(4).uniform_(0.5, 1.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        return self.head(torch.relu(self.conv2(h)).mean(dim=(2, 3)))


def _ensure(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _json(what: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise AssertionError(f"{what}.describe() must be JSON-serialisable; got {value!r}") from error


def _state(model: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


INPUT_SHAPE = (1, 6, 6)


def _conv_setup() -> tuple:
    model = SmallConvNet().eval()
    components = conv_filters(model, ["conv1", "conv2"])
    x = torch.randn(6, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    return model, components, x


# ------------------------------------------------------------------ ablation strategies
def check_ablation_strategy(strategy: AblationStrategy) -> None:
    """Run ``strategy`` through the ablation contract on :class:`SmallConvNet` (see module doc).

    Strategies fitted on reference inputs take inputs of shape ``(rows, *INPUT_SHAPE)``.
    """
    name = type(strategy).__name__
    model, components, x = _conv_setup()
    fitted = fitted_ablation(strategy, model, components)
    _ensure(fitted is strategy, f"{name}: fitted_ablation must return the instance it was given")
    _ensure(strategy.is_fitted(components), f"{name}: is_fitted() is False after fit()")
    _json(name, strategy.describe())
    n = components.n_components
    with torch.no_grad():
        plain = model(x)
        with ComponentGates(components, strategy) as gates:
            gates.values = torch.ones(1, n)
            kept = model(x)
        _ensure(torch.equal(kept, plain), f"{name}: with every gate at 1 the output must equal"
                " the plain model's exactly")
        for column in (0, components.group_slice(1).start + 1):
            group_position = 0 if column < components.group_slice(1).start else 1
            group = components.groups[group_position]
            local = column - components.group_slice(group_position).start
            gate_row = torch.ones(1, n)
            gate_row[0, column] = 0
            with ActivationRecorder(components) as before, ComponentGates(components, strategy) as gates:
                gates.values = gate_row
                with ActivationRecorder(components) as after:
                    model(x)
            original = before.recorded[(group.module_name, group.site)]
            gated = after.recorded[(group.module_name, group.site)]
            changed = (gated != original).flatten(2).any(-1).any(0) if gated.dim() > 2 \
                else (gated != original).any(0)
            others = torch.ones_like(changed)
            others[local] = False
            _ensure(not bool(changed[others].any()), f"{name}: ablating component {column}"
                    f" ({components.labels[column]}) changed other units of {group.module_name}")
            replacement = strategy.replacement(group, components.module(group), original, None)
            expected = torch.as_tensor(replacement, dtype=original.dtype).expand_as(original)
            _ensure(torch.allclose(gated[:, local], expected[:, local], atol=1e-6),
                    f"{name}: an ablated component's activation must equal the replacement")
    masks = torch.rand(5, n, generator=torch.Generator().manual_seed(2)) > 0.3
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    whole = evaluate_masks(model, components, x, masks, target=target, ablation=strategy)
    halves = torch.cat([
        evaluate_masks(model, components, x[:3], masks, target=target[:3], ablation=strategy),
        evaluate_masks(model, components, x[3:], masks, target=target[3:], ablation=strategy,
                       example_offset=3)], dim=1)
    _ensure(torch.allclose(whole, halves, atol=1e-5), f"{name}: outputs depend on how the"
            " examples are batched (pass example_offset through to example_index)")


# ------------------------------------------------------------------ output functions
def check_output_function(output: Union[OutputFunction, Callable[..., Tensor]],
                          model_output: Optional[Any] = None, target: Any = None) -> None:
    """Run ``output`` on ``model_output`` rows (default: random logits of 8 rows x 5 classes)."""
    fn = resolve_output(output, target)
    name = type(fn).__name__
    if model_output is None:
        model_output = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
        target = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]) if target is None else target
    _json(name, fn.describe())
    values = fn(model_output, target)
    rows = model_output.shape[0]
    _ensure(isinstance(values, Tensor) and values.shape == (rows,),
            f"{name}: must return one value per row, shape ({rows},); got"
            f" {tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}")
    _ensure(values.is_floating_point(), f"{name}: values must be floating point")
    _ensure(torch.equal(values, fn(model_output, target)), f"{name}: not deterministic")
    target_rows = target if isinstance(target, Tensor) and target.dim() > 0 else None
    for part in (slice(0, rows // 2), slice(rows // 2, rows)):
        sub_target = target_rows[part] if target_rows is not None else target
        sub = fn(model_output[part], sub_target)
        _ensure(torch.allclose(sub, values[part], atol=1e-6), f"{name}: a row's value must"
                " depend only on that row (values changed when the batch was split)")


# ------------------------------------------------------------------ samplers
def check_sampler(sampler: MaskSampler, n_components: int = 40) -> None:
    """Run ``sampler`` through the sampler contract (see module doc)."""
    name = type(sampler).__name__
    _json(name, sampler.describe())
    full = sampler.sample(n_components, 0, 600, seed=3)
    _ensure(full.dtype == torch.bool and full.shape == (600, n_components),
            f"{name}: sample() must return bool (rows, N); got {full.dtype} {tuple(full.shape)}")
    part = sampler.sample(n_components, 137, 421, seed=3)
    _ensure(torch.equal(part, full[137:421]), f"{name}: row r must depend only on (seed, r):"
            " sample(start=137, stop=421) differs from the same rows of sample(0, 600)")
    _ensure(not torch.equal(full, sampler.sample(n_components, 0, 600, seed=4)),
            f"{name}: different seeds gave the same masks")
    share = 1.0 - full.double().mean().item()
    fraction = float(sampler.ablation_fraction)
    tolerance = 5 * (fraction * (1 - fraction) / full.numel()) ** 0.5 + 1.0 / n_components
    _ensure(abs(share - fraction) <= tolerance, f"{name}: ablated share {share:.4f} is far from"
            f" ablation_fraction {fraction}")


# ------------------------------------------------------------------ solvers
def check_solver(solver: Union[Solver, StreamingSolver], tolerance: float = 0.05) -> None:
    """Fit an exactly linear problem (300 masks, 10 components, 4 examples)."""
    name = type(solver).__name__
    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 10, generator=g) > 0.3
    coef = torch.randn(4, 10, generator=g, dtype=torch.float64)
    intercept = torch.randn(4, generator=g, dtype=torch.float64)
    Y = intercept + X.double() @ coef.T
    if isinstance(solver, StreamingSolver):
        def chunks() -> Any:
            return iter([(X[:150], Y[:150]), (X[150:], Y[150:])])
        fit = solver.fit(chunks)
        again = solver.fit(chunks)
    else:
        one = SufficientStatistics.from_arrays(X, Y)
        two = SufficientStatistics.from_arrays(X[:120], Y[:120]).merge(
            SufficientStatistics.from_arrays(X[120:], Y[120:]))
        fit = solver.fit(one)
        again = solver.fit(two)
        _ensure(torch.allclose(fit.coef, again.coef, atol=1e-8), f"{name}: statistics merged"
                " from chunks must give the same fit as one pass")
    _ensure(isinstance(fit, FitResult), f"{name}: fit() must return a FitResult")
    _ensure(fit.coef.shape == (4, 10) and fit.intercept.shape == (4,),
            f"{name}: coef must be (n, N) and intercept (n,); got {tuple(fit.coef.shape)},"
            f" {tuple(fit.intercept.shape)}")
    _ensure(fit.coef.dtype == torch.float64, f"{name}: coefficients must be float64")
    error = (fit.coef.cpu() - coef).abs().max().item() / coef.abs().max().item()
    _ensure(error <= tolerance, f"{name}: relative coefficient error {error:.3g} on an exactly"
            f" linear problem exceeds {tolerance}")
    _ensure(torch.allclose(fit.coef, again.coef, atol=1e-6), f"{name}: not deterministic")


# ------------------------------------------------------------------ attribution methods
def check_attribution_method(factory: Callable[[nn.Module, ComponentSet], Any],
                             exact: bool = False, tolerance: float = 1e-4,
                             paired: bool = False, **attribute_kwargs: Any) -> None:
    """Run ``factory(model, components).attribute(inputs, target=...)`` through the contract.

    ``factory`` builds the method for a model and its components (e.g.
    ``lambda m, c: ComponentAblation(m, c)``). With ``exact=True`` the attributions of the
    target logit (``output="logit"`` is passed unless given) must equal, within ``tolerance``
    (relative to the largest), each component's exact contribution on :class:`AdditiveNet`
    (the ablated output is lower by the attribution).

    With ``paired=True`` every call also passes ``baselines=`` (seeded paired inputs, sliced
    with the inputs, a 1-tuple for tuple inputs); the exact answer is then each component's
    contribution relative to its activation on the paired baseline, and pairing the
    baselines with other rows must change the answer.
    """
    if exact:
        attribute_kwargs.setdefault("output", "logit")
    model = AdditiveNet().eval()
    components = linear_neurons(model, ["hidden"])
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)) if paired else None

    def pairing(rows: slice, as_tuple: bool = False) -> Dict[str, Any]:
        if base is None:
            return {}
        return {"baselines": (base[rows],) if as_tuple else base[rows]}

    method = factory(model, components)
    name = type(method).__name__
    state, hooks = _state(model), _hooks(model)
    attributions = method.attribute(x, target=target, **pairing(slice(None)),
                                    **attribute_kwargs)
    _ensure(isinstance(attributions, Tensor) and attributions.shape == (6, components.n_components),
            f"{name}: a tensor input must give a (batch, n_components) tensor; got"
            f" {getattr(attributions, 'shape', type(attributions).__name__)}")
    as_tuple = method.attribute((x,), target=target, **pairing(slice(None), True),
                                **attribute_kwargs)
    _ensure(isinstance(as_tuple, tuple) and len(as_tuple) == 1
            and torch.allclose(as_tuple[0], attributions, atol=1e-6),
            f"{name}: a tuple input must give a 1-tuple with the same attributions")
    _ensure(_hooks(model) == hooks, f"{name}: hooks were left on the model")
    after = model.state_dict()
    _ensure(all(torch.equal(state[k], after[k]) for k in state),
            f"{name}: the model's parameters or buffers changed")
    first = method.attribute(x[:2], target=target[:2], **pairing(slice(0, 2)),
                             **attribute_kwargs)
    scale = attributions.abs().max().item() + 1e-12
    _ensure(torch.allclose(first, attributions[:2], atol=tolerance * scale, rtol=tolerance),
            f"{name}: attributions of the first rows changed when attributed alone (batching)")
    if base is not None:
        shifted = method.attribute(x, target=target, baselines=base.roll(1, 0),
                                   **attribute_kwargs)
        _ensure(not torch.allclose(shifted, attributions, atol=tolerance * scale),
                f"{name}: pairing the baselines with other rows did not change the"
                " attributions; baselines= must pair row e of the baselines with example e")
    if exact:
        truth = model.effects(x, target, base)
        error = (attributions - truth).abs().max().item() / (truth.abs().max().item() + 1e-12)
        _ensure(error <= tolerance, f"{name}: relative error {error:.3g} against the exact"
                f" contributions of an additive model exceeds {tolerance}")
