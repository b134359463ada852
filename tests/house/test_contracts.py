"""Every built-in implementation of each extension point passes its contract check, and a
deliberately broken subclass of each fails it (so the checks can fail)."""

import pytest
import torch

from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAttributionPatching,
    ComponentIntegratedGradients,
    ComponentRelevancePatching,
    Margin,
)
from captum_coar.ablation import (
    AblationStrategy,
    ConstantAblation,
    MeanAblation,
    ResampleAblation,
    WeightAblation,
    ZeroAblation,
)
from captum_coar.baselines import ComponentGradientXParameter
from captum_coar.outputs import Logit, LogProb, Loss, OutputFunction
from captum_coar.sampling import BernoulliSampler, FixedFractionSampler, MaskSampler
from captum_coar.solvers import Lasso, LeastSquares, MinibatchRidge, Ridge
from captum_coar.testing import (
    INPUT_SHAPE,
    check_ablation_strategy,
    check_attribution_method,
    check_output_function,
    check_sampler,
    check_solver,
)

REFERENCE = torch.randn(10, *INPUT_SHAPE, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("strategy", [
    ZeroAblation(), WeightAblation(), ConstantAblation(0.3), MeanAblation(REFERENCE),
    MeanAblation(REFERENCE, per_position=True), ResampleAblation(REFERENCE, seed=1),
], ids=lambda s: repr(s)[:40])
def test_builtin_ablation_strategies(strategy):
    check_ablation_strategy(strategy)


class _LeakyAblation(AblationStrategy):
    """Broken on purpose: the replacement depends on the whole batch (its mean over rows)."""

    name = "leaky"

    def replacement(self, group, module, activation, example_index=None):
        return activation.mean(dim=0, keepdim=True)


def test_ablation_check_catches_a_batch_dependent_strategy():
    with pytest.raises(AssertionError, match="batched"):
        check_ablation_strategy(_LeakyAblation())


@pytest.mark.parametrize("output", [Margin(), Logit(), LogProb(), Loss(),
                                    lambda out, target: out[:, 0] - out[:, 1]],
                         ids=["margin", "logit", "log_prob", "loss", "callable"])
def test_builtin_output_functions(output):
    check_output_function(output)


class _BatchNormalisedOutput(OutputFunction):
    """Broken on purpose: each row's value is centred on the batch mean."""

    name = "centred"

    def __call__(self, model_output, target):
        values = model_output[:, 0]
        return values - values.mean()


def test_output_check_catches_a_batch_dependent_output():
    with pytest.raises(AssertionError, match="depend only on that row"):
        check_output_function(_BatchNormalisedOutput())


@pytest.mark.parametrize("sampler", [BernoulliSampler(0.1), BernoulliSampler(0.5),
                                     FixedFractionSampler(0.2)], ids=repr)
def test_builtin_samplers(sampler):
    check_sampler(sampler)


class _GlobalStateSampler(BernoulliSampler):
    """Broken on purpose: ignores the row index and draws from torch's global generator."""

    def sample(self, n_components, start, stop, seed, *, device=None):
        return torch.rand(stop - start, n_components) > self.ablation_fraction


def test_sampler_check_catches_row_dependence():
    with pytest.raises(AssertionError, match=r"depend only on \(seed, r\)"):
        check_sampler(_GlobalStateSampler(0.1))


@pytest.mark.parametrize("solver", [LeastSquares(), Ridge(alpha=1e-6), Lasso(alpha=1e-6),
                                    MinibatchRidge(alpha=1e-6, epochs=300, lr=0.05)],
                         ids=lambda s: type(s).__name__)
def test_builtin_solvers(solver):
    check_solver(solver, tolerance=0.05 if isinstance(solver, MinibatchRidge) else 1e-3)


class _ShrunkSolver(LeastSquares):
    """Broken on purpose: halves every coefficient."""

    def _fit(self, stats, validation_stats):
        fit = super()._fit(stats, validation_stats)
        fit.coef = fit.coef / 2
        return fit


def test_solver_check_catches_wrong_coefficients():
    with pytest.raises(AssertionError, match="relative coefficient error"):
        check_solver(_ShrunkSolver())


#: every built-in attribution method: (factory, attribute keywords), with readable ids
BUILTIN_METHODS = pytest.mark.parametrize("factory, kwargs", [
    (lambda m, c: ComponentAblation(m, c), {}),
    (lambda m, c: ComponentAttributionPatching(m, c), {}),
    (lambda m, c: ComponentGradientXParameter(m, c), {}),
    (lambda m, c: ComponentIntegratedGradients(m, c), {"n_steps": 8}),
    (lambda m, c: ComponentAblationRegression(m, c), {"n_masks": 60, "ablation_fraction": 0.3}),
    (lambda m, c: ComponentRelevancePatching(m, c, require_attention=False), {}),
], ids=["leave-one-out", "attribution patching", "gradient x parameter", "gate IG", "COAR",
        "relevance patching"])


@BUILTIN_METHODS
def test_builtin_attribution_methods_give_the_exact_answer_on_an_additive_model(factory, kwargs):
    check_attribution_method(factory, exact=True, **kwargs)


@BUILTIN_METHODS
def test_builtin_attribution_methods_pass_the_contract_with_paired_baselines(factory, kwargs):
    check_attribution_method(factory, exact=True, paired=True, **kwargs)


class _IgnoresPairing(ComponentAblation):
    """Broken on purpose: patches every example from the first baseline row."""

    def attribute(self, inputs, *args, baselines=None, **kwargs):
        if baselines is not None:
            first = baselines[0] if isinstance(baselines, tuple) else baselines
            baselines = first[:1].expand_as(first)
            baselines = (baselines,) if isinstance(inputs, tuple) else baselines
        return super().attribute(inputs, *args, baselines=baselines, **kwargs)


def test_attribution_check_catches_baselines_that_are_not_paired_by_row():
    with pytest.raises(AssertionError):
        check_attribution_method(lambda m, c: _IgnoresPairing(m, c), exact=True, paired=True)


class _Doubled(ComponentAblation):
    """Broken on purpose: twice the leave-one-out effect."""

    def attribute(self, inputs, *args, **kwargs):
        result = super().attribute(inputs, *args, **kwargs)
        return tuple(2 * r for r in result) if isinstance(result, tuple) else 2 * result


def test_attribution_check_catches_a_wrong_answer():
    with pytest.raises(AssertionError, match="exact contributions"):
        check_attribution_method(lambda m, c: _Doubled(m, c), exact=True)


def test_sampler_subclass_contract_is_public():
    class EveryOther(MaskSampler):
        """A user's sampler: ablates each component with the given probability, row-wise."""

        name = "every_other"

        def _keep_from_uniform(self, u, alpha):
            return u >= alpha

    check_sampler(EveryOther(0.25))
