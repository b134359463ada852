"""An example's attributions do not depend on which other examples share its batch.

Masks depend only on ``(seed, row)``, so every solver must give example ``i`` the same
coefficients whether it is fitted alone or with others (to 1e-6, relative to the example's
largest coefficient). Checked on the sufficient statistics of a non-additive problem for every
solver, and end to end through ``attribute`` (float64 model, so the outputs themselves do not
change with the batch) for the default and solvers that choose a penalty.
"""

from __future__ import annotations

import copy

import pytest
import torch
from coar_fixtures import digits_cnn

from captum_coar.coar import ComponentAblationRegression
from captum_coar.components import ComponentSet
from captum_coar.solvers import (
    AutoLasso,
    AutoRidge,
    DifferenceOfMeans,
    EmpiricalBayesRidge,
    Lasso,
    LeastSquares,
    MinibatchRidge,
    Ridge,
    SufficientStatistics,
)

N, M, V, EXAMPLES = 10, 60, 30, 6  # components, training rows, held-out rows, examples


def problem():
    """Masks, outputs of very different scales (one example 100x the others) with products of
    components (not additive), and a rough prior."""
    g = torch.Generator().manual_seed(3)
    X = torch.rand(M + V, N, generator=g) < 0.8
    beta = torch.randn(EXAMPLES, N, generator=g, dtype=torch.float64)
    beta[2] *= 100.0
    Xf = X.double()
    Y = Xf @ beta.T + 2.0 * (Xf[:, :1] * Xf[:, 1:2]) * beta[:, :1].T
    Y = Y + 0.3 * torch.randn(M + V, EXAMPLES, generator=g, dtype=torch.float64)
    prior = beta + 0.5 * torch.randn(EXAMPLES, N, generator=g, dtype=torch.float64)
    return X, Y, prior


def fit(solver_for, X, Y, columns, prior, validation):
    solver = solver_for(prior[columns])
    Yc = Y[:, columns]
    if isinstance(solver, MinibatchRidge):
        return solver.fit(lambda: [(X[:M], Yc[:M])]).coef
    train = SufficientStatistics.from_arrays(X[:M], Yc[:M])
    held = SufficientStatistics.from_arrays(X[M:], Yc[M:]) if validation else None
    return solver.fit(train, held).coef


SOLVERS = {
    "least_squares": (lambda p: LeastSquares(), False),
    "ridge": (lambda p: Ridge(alpha=3.0), False),
    "ridge, alphas chosen": (lambda p: Ridge(alphas=[0.1, 1.0, 10.0, 100.0]), True),
    "lasso": (lambda p: Lasso(alpha=0.05), False),
    "lasso, automatic path": (lambda p: Lasso(), True),
    "ridge_auto (GCV)": (lambda p: AutoRidge(), False),
    "ridge_auto (held-out)": (lambda p: AutoRidge(criterion="validation"), True),
    "ridge_auto, prior": (lambda p: AutoRidge(prior=p), False),
    "lasso_auto": (lambda p: AutoLasso(), True),
    "lasso_auto, prior": (lambda p: AutoLasso(prior=p), True),
    "difference_of_means": (lambda p: DifferenceOfMeans(), False),
    "streaming": (lambda p: MinibatchRidge(alpha=1.0, epochs=3, batch_size=20), False),
    "eb_ridge": (lambda p: EmpiricalBayesRidge(), False),
    "eb_ridge, groups and prior": (lambda p: EmpiricalBayesRidge(prior=p, groups=[3, 3, 4]),
                                   False),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_fits_each_example_on_its_own(name):
    solver_for, validation = SOLVERS[name]
    X, Y, prior = problem()
    batch = fit(solver_for, X, Y, list(range(EXAMPLES)), prior, validation)
    for i in (0, 2, 5):
        alone = fit(solver_for, X, Y, [i], prior, validation)[0]
        scale = batch[i].abs().max()
        assert float((alone - batch[i]).abs().max() / scale) <= 1e-6, (name, i)
    subset = fit(solver_for, X, Y, [4, 2], prior, validation)  # other neighbours, other order
    assert float((subset[1] - batch[2]).abs().max() / batch[2].abs().max()) <= 1e-6


@pytest.mark.parametrize("solver", [None, "ridge_auto", "lasso_auto", "least_squares"])
def test_attribute_gives_an_example_the_same_answer_in_any_batch(solver):
    model, images, labels = digits_cnn()
    model = copy.deepcopy(model).double()  # float32 passes may round differently per batch
    x, y = images[:5].double(), labels[:5]
    components = ComponentSet.from_model(model, kinds=("conv_filters",))
    coar = ComponentAblationRegression(model, components)
    n_masks = 4 * components.n_components if solver == "least_squares" else \
        components.n_components
    common = dict(n_masks=n_masks, ablation_fraction=0.2, seed=5, solver=solver,
                  validation_fraction=0.2 if solver == "lasso_auto" else 0.0)
    batch = coar.attribute(x, target=y, **common)
    if solver is None:
        assert coar.last_result_.fit.solver == "eb_ridge"
        assert coar.last_result_.settings["prior"]["method"] == "attribution patching"
    for i in (0, 3):
        alone = coar.attribute(x[i:i + 1], target=y[i:i + 1], **common)[0]
        assert float((alone - batch[i]).abs().max() / batch[i].abs().max()) <= 1e-6, i
    pair = coar.attribute(x[[3, 1]], target=y[[3, 1]], **common)
    assert float((pair[0] - batch[3]).abs().max() / batch[3].abs().max()) <= 1e-6
