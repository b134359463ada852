"""Captum's own methods and metrics over components, through a gated forward function.

Contract
--------
:class:`GatedForward` wraps a model (or forward function) into a function whose first input
is the gate matrix ``(rows, n_components)``: ``gated(gates, *model_inputs)`` runs the model
with activation ``r + g * (a - r)`` for every component (``r`` from the ablation strategy,
gate 1 = kept, 0 = ablated) and returns the model output, or, when ``output=`` is given, the
output function's value per row with the target passed as the LAST positional argument
(``gated(gates, *model_inputs, target)``), so that Captum expands targets together with the
inputs. Pass the real inputs through ``additional_forward_args``
(:meth:`GatedForward.forward_args` builds the tuple) and the gates as ``inputs``
(:meth:`GatedForward.kept` gives all-ones gates), and Captum's ``FeatureAblation`` (with
baseline 0 = leave-one-out), ``IntegratedGradients``, ``ShapleyValueSampling``,
``KernelShap``, ``Lime`` and ``NoiseTunnel`` attribute over components unchanged, while
``captum.metrics.infidelity`` and ``sensitivity_max`` evaluate any ``(batch, n_components)``
component attribution.

Rows: gate row ``i`` goes with input row ``i`` when the counts agree. When the inputs have
``B`` rows and the gates ``G = k * B``, the inputs (and tensor target) are repeated ``k``
times block-wise (``torch.cat([x] * k)``, Captum's ``repeat`` expansion); one input row
serves any number of gate rows, and one gate row serves every input row.

:func:`ablation_perturbation` returns a perturbation function for ``infidelity`` that ablates
random subsets of components (a fraction ``ablation_fraction``; Bernoulli by default, the COAR
masks; see
:mod:`captum_coar.sampling`): the perturbed gates are ``gates * keep`` and the
perturbation ``gates - perturbed``, so ``attribution . perturbation`` is the summed attribution
of the ablated components, which a good attribution matches with
``F(gates) - F(perturbed)``.

``baselines=`` (paired reference inputs, Captum's meaning): gate 0 then means the component's
activation on the paired baseline example, so ``FeatureAblation`` on the gates is exact
activation patching. The baselines pair with the model inputs passed after the gates (row
``e`` of the baselines with input row ``e``; the first ``len(baselines)`` inputs are checked
against them on every call, shapes equal) and run with ``baseline_forward_args``.

Every call runs the shared preflight (:mod:`captum_coar._preflight`) on the first model
input: an empty batch, non-finite values, random modules in training mode and targets outside
the classes are refused; its probe (two ungated forward passes of two rows) runs on the first
call and again after any module's training flag changed. The model inputs are passed as
copies, so a forward function that writes its inputs never changes the caller's tensors.

``sensitivity_max`` needs no adapter: like COAR, every baseline returns a 1-tuple of
attributions for a tuple of inputs, which is what that metric passes and expects.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from ._checks import check_instance
from ._inputs import as_tuple, expand_target, repeat_rows
from ._modules import model_device
from ._pairing import paired_baselines, patch_strategy
from ._preflight import preflight
from ._state import keeps_model_state
from .ablation import AblationStrategy, fitted_ablation, resolve_ablation
from .components import ComponentSet
from .gates import ComponentGates
from .outputs import OutputFunction, resolve_output
from .sampling import MaskSampler, resolve_sampler

__all__ = ["GatedForward", "ablation_perturbation"]


class GatedForward:
    """A forward function of the gates: ``gated(gates, *inputs[, target])``.

    Args:
        forward_func: the model or a function of its inputs.
        components: the gated components.
        ablation: strategy name or instance (what gate 0 means).
        output: None to return the model output (use Captum's ``target=``), or an output
            function name / callable; then the last positional argument is the target.
        baselines: paired reference inputs (see the module docs); None = ``ablation``.
        baseline_forward_args: extra forward arguments of the baseline run.

    Example:
        >>> import torch
        >>> from captum_coar import GatedForward, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> from captum.attr import FeatureAblation
        >>> gated = GatedForward(model, neurons, output="logit")   # a function of the gates
        >>> loo = FeatureAblation(gated).attribute(gated.kept(4), baselines=0.0,
        ...                                        additional_forward_args=gated.forward_args(x, y))
        >>> torch.allclose(loo, model.effects(x, y), atol=1e-5)     # Captum's leave-one-out
        True
    """

    def __init__(self, forward_func: Callable[..., Any], components: ComponentSet,
                 ablation: Union[str, AblationStrategy] = "weights",
                 output: Union[None, str, OutputFunction, Callable[..., Tensor]] = None,
                 baselines: Any = None, baseline_forward_args: Any = None) -> None:
        self.forward_func = forward_func
        self.components = components
        self.ablation = ablation
        self.output = output
        self.baselines = baselines
        self.baseline_forward_args = baseline_forward_args

    @property
    def n_components(self) -> int:
        return self.components.n_components

    def kept(self, batch_size: int) -> Tensor:
        """All-ones gates ``(batch_size, n_components)`` on the model's device."""
        device = model_device(self.components.model)
        return torch.ones(int(batch_size), self.n_components, device=device)

    def forward_args(self, inputs: Any, target: Any = None,
                     additional_forward_args: Any = None) -> Tuple[Any, ...]:
        """The ``additional_forward_args`` tuple for Captum: inputs, extra args, target."""
        args = as_tuple(inputs) + as_tuple(additional_forward_args)
        if self.output is None:
            if target is not None:
                raise ValueError("output=None returns the model output; pass target to Captum's"
                                 " `target=` instead, or construct GatedForward with output=...")
            return args
        return args + (target,)

    def _prepare(self) -> None:
        check_instance("components", self.components, ComponentSet, "a ComponentSet")
        if getattr(self, "_ablation_key", None) is not self.ablation:
            self.strategy_ = resolve_ablation(self.ablation)
            self._ablation_key = self.ablation
        if getattr(self, "_output_key", None) is not self.output and self.output is not None:
            self.output_fn_ = resolve_output(self.output, 0)
            self._output_key = self.output

    @keeps_model_state
    def __call__(self, gates: Tensor, *args: Any) -> Any:
        self._prepare()
        if self.output is not None:
            if not args:
                raise ValueError(
                    "GatedForward(output=...) was called with the gates only; it expects"
                    " gated(gates, *inputs, target): pass the target as the last argument"
                    " (e.g. additional_forward_args=(*inputs, target) in Captum)")
            model_args, target = tuple(args[:-1]), args[-1]
        else:
            model_args, target = tuple(args), None
        if not isinstance(gates, Tensor) or gates.dim() != 2 or gates.shape[1] != self.n_components:
            shape = tuple(gates.shape) if isinstance(gates, Tensor) else type(gates).__name__
            raise ValueError(f"gates must have shape (rows, {self.n_components}), got {shape}")
        self._preflight(model_args, target)
        if self.baselines is not None:
            self._pair_baselines(model_args)
        model_args, target, index = self._match_rows(gates.shape[0], model_args, target)
        fitted_ablation(self.strategy_, self.forward_func, self.components)
        with ComponentGates(self.components, self.strategy_) as hooks:
            hooks.values = gates.to(model_device(self.components.model))
            hooks.example_index = index
            result = self.forward_func(*model_args)
            hooks.check_all_ran()
        if self.output is None:
            return result
        return self.output_fn_(result, target)

    def _preflight(self, model_args: Tuple[Any, ...], target: Any) -> None:
        """The shared preflight on the first model input: empty, non-finite and training-mode
        checks and the targets on every call; the probe (two forward passes of two rows) on
        the first call and again whenever a module's training flag changed."""
        if not model_args or not isinstance(model_args[0], Tensor) or model_args[0].dim() == 0:
            return  # _match_rows names the missing inputs
        modes = tuple(m.training for m in self.components.model.modules())
        probe = getattr(self, "_probed_modes", None) != modes
        output_fn = self.output_fn_ if self.output is not None else None
        report = preflight("GatedForward", self.forward_func, self.components, model_args[0],
                           target, model_args[1:], output_fn, probe=probe)
        if probe:
            self._probed_modes, self._classes = modes, report.classes
        report.classes = self._classes
        report.check_target(target)

    def _pair_baselines(self, model_args: Tuple[Any, ...]) -> None:
        """Check the baselines against the model inputs; build the patch strategy once."""
        given = as_tuple(self.baselines)
        inputs = tuple(model_args[:len(given)])
        if len(inputs) < len(given) or not all(isinstance(x, Tensor) for x in inputs):
            raise ValueError(
                f"GatedForward has {len(given)} baselines but was called with"
                f" {len(inputs)} tensor inputs after the gates; the baselines pair with the"
                " first model inputs")
        if getattr(self, "_baselines_key", None) is not self.baselines:
            self.strategy_ = patch_strategy(self.ablation, inputs, self.baselines,
                                            self.baseline_forward_args, self.forward_func)
            self._baselines_key = self.baselines
        else:
            paired_baselines(inputs, self.baselines, self.forward_func)

    def _match_rows(self, n_gates: int, model_args: Tuple[Any, ...],
                    target: Any) -> Tuple[Tuple[Any, ...], Any, Optional[Tensor]]:
        first = next((a for a in model_args if isinstance(a, Tensor) and a.dim() > 0), None)
        if first is None:
            raise TypeError("GatedForward needs the model inputs (tensors with the batch on dim 0)"
                            " after the gates; pass them through additional_forward_args")
        n_inputs = first.shape[0]
        if n_gates == n_inputs or n_gates == 1:  # copies: the forward may write its inputs
            return repeat_rows(model_args, 1, n_inputs), target, torch.arange(n_inputs)
        if n_gates % n_inputs:
            raise ValueError(
                f"{n_gates} gate rows cannot be matched with {n_inputs} input rows; the gate rows"
                " must equal the input rows, be a multiple of them, or be 1"
            )
        repeats = n_gates // n_inputs
        return (repeat_rows(model_args, repeats, n_inputs), expand_target(target, n_inputs, repeats),
                torch.arange(n_inputs).repeat(repeats))


def ablation_perturbation(
    ablation_fraction: Optional[float] = None,
    sampler: Union[str, MaskSampler] = "bernoulli",
    seed: int = 0,
) -> Callable[..., Tuple[Tensor, Tensor]]:
    """A ``perturb_func`` for ``captum.metrics.infidelity`` that ablates random subsets.

    Args:
        ablation_fraction: fraction of components ablated per perturbation; default 0.05 for
            a sampler given by name, the sampler's own fraction for a sampler instance (a
            different value given beside an instance is an error).
        sampler: ``"bernoulli"`` (each ablated with probability ``ablation_fraction``),
            ``"fixed"`` (exactly ``round(ablation_fraction * N)``) or a
            :class:`~captum_coar.sampling.MaskSampler`.
        seed: masks are reproducible: the ``r``-th row drawn overall depends only on
            ``(seed, r)``.

    The returned function maps gates ``(rows, N)`` (and optional baseline gates) to
    ``(perturbation, perturbed_gates)``.

    Example:
        >>> import torch
        >>> from captum_coar import GatedForward, ablation_perturbation, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> from captum.metrics import infidelity
        >>> gated = GatedForward(model, neurons, output="logit")
        >>> score = infidelity(gated, ablation_perturbation(0.2, seed=0), gated.kept(4),
        ...                    model.effects(x, y), additional_forward_args=gated.forward_args(x, y),
        ...                    n_perturb_samples=10)
        >>> bool((score < 1e-8).all())          # exact effects of an additive model: no infidelity
        True
    """
    if ablation_fraction is None and not isinstance(sampler, MaskSampler):
        ablation_fraction = 0.05
    mask_sampler = resolve_sampler(sampler, ablation_fraction)
    drawn = [0]

    def perturb(gates: Tensor, baselines: Any = None) -> Tuple[Tensor, Tensor]:
        rows, n_components = gates.shape[0], gates.shape[-1]
        keep = mask_sampler.sample(n_components, drawn[0], drawn[0] + rows, seed)
        drawn[0] += rows
        keep = keep.to(gates.device).reshape(gates.shape)
        replacement = torch.zeros_like(gates) if baselines is None else torch.as_tensor(
            baselines, dtype=gates.dtype, device=gates.device).expand_as(gates)
        perturbed = torch.where(keep, gates, replacement)
        return gates - perturbed, perturbed

    return perturb

