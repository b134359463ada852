"""The estimators behind ``attribute(solver=...)``: the default by m, priors, error bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coar_fixtures import digits_cnn

from captum_coar.coar import ComponentAblationRegression, tensor_batches
from captum_coar.components import conv_filters
from captum_coar.solvers import AutoRidge, LeastSquares
from captum_coar.stores import InMemoryStore

sklearn_linear = pytest.importorskip("sklearn.linear_model")


class RowCounter:
    """Forward function that counts the example rows it is given."""

    def __init__(self, model):
        self.model, self.rows = model, 0

    def __call__(self, x):
        self.rows += int(x.shape[0])
        return self.model(x)


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_cnn()
    return model, conv_filters(model, ["conv1", "conv2"]), x[:5], y[:5]  # N = 18


def test_default_solver_follows_the_number_of_masks(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    assert coar.default_solver(36) == "ridge_auto" and coar.default_solver(37) == "least_squares"
    coar.attribute(x, target=y, n_masks=30, ablation_fraction=0.2)
    assert coar.last_result_.fit.solver == "ridge_auto"
    small = coar.last_result_
    coar.attribute(x, target=y, n_masks=90, ablation_fraction=0.2)
    assert coar.last_result_.fit.solver == "least_squares"
    # explicit least squares on the same 90 masks: identical
    explicit = coar.attribute(x, target=y, n_masks=90, ablation_fraction=0.2,
                              solver="least_squares")
    torch.testing.assert_close(explicit, coar.last_result_.attributions)
    assert small.standard_errors is not None and small.standard_errors.shape == (5, 18)


def test_prior_shrinkage_through_attribute(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    prior = torch.randn(5, 18, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    held = coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.2,
                          solver=AutoRidge(prior=prior, rescale=False, alphas=[1e12]))
    torch.testing.assert_close(held.double(), prior, rtol=0, atol=1e-5)
    free = coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.2,
                          solver=AutoRidge(prior=prior, alphas=[0.0]))
    ls = coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.2, solver=LeastSquares())
    torch.testing.assert_close(free, ls, rtol=1e-4, atol=1e-5)


def test_wrong_prior_shape_is_refused_before_any_forward_pass(digits):
    model, components, x, y = digits
    counter = RowCounter(model)
    coar = ComponentAblationRegression(counter, components)
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(5, 18\)"):
        coar.attribute(x, target=y, n_masks=40, solver=AutoRidge(prior=torch.zeros(4, 18)))
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(5, 18\)"):
        coar.attribute(x, target=y, n_masks="auto", solver=AutoRidge(prior=torch.zeros(5, 3)))
    assert counter.rows == 0


def test_lasso_auto_through_attribute_is_deterministic_and_matches_sklearn(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    kwargs = dict(target=y, n_masks=60, ablation_fraction=0.2, solver="lasso_auto",
                  validation_fraction=0.25, seed=4)
    a = coar.attribute(x, **kwargs)
    fit = coar.last_result_.fit
    b = coar.attribute(x, **kwargs)
    assert torch.equal(a, b) and coar.last_result_.fit.alpha == fit.alpha
    assert coar.last_result_.standard_errors is None
    with pytest.raises(ValueError, match=r"`standard_errors` must be a tensor"):
        coar.last_result_.confidence_interval()
    # the same 60 masks from a store, and sklearn's Lasso on all of them at the chosen alpha
    store = coar.collect(tensor_batches(x, y), InMemoryStore(), n_masks=60,
                         ablation_fraction=0.2, seed=4)
    X = store.read_masks().numpy().astype(float)
    Y = store.read_outputs().numpy().astype(float)
    ref = sklearn_linear.Lasso(alpha=float(fit.alpha), tol=1e-10, max_iter=100000).fit(X, Y)
    np.testing.assert_allclose(fit.coef.numpy(), ref.coef_, atol=2e-4)


def test_confidence_interval_is_coef_plus_minus_z_se(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    coar.attribute(x, target=y, n_masks=120, ablation_fraction=0.2, solver="least_squares")
    result = coar.last_result_
    low, high = result.confidence_interval(0.9)
    z = 1.6448536269514722
    torch.testing.assert_close(high - result.attributions, z * result.standard_errors)
    torch.testing.assert_close(result.attributions - low, z * result.standard_errors)
    assert result.standard_errors.dtype == result.attributions.dtype
