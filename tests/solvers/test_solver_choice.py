"""One default-solver rule on every path; solvers check themselves before any forward pass;
the identity of the data is computed once per call."""

from __future__ import annotations

import pytest
import torch
from coar_fixtures import CountingForward, additive_neurons

import captum_coar.coar._identity as identity_module
import captum_coar.solvers._choice as choice
from captum_coar.coar import ComponentAblationRegression, tensor_batches
from captum_coar.coar.adaptive import StopWhen, collect_until
from captum_coar.solvers import (
    AutoLasso,
    AutoRidge,
    DifferenceOfMeans,
    Lasso,
    LeastSquares,
    MinibatchRidge,
    Ridge,
    default_solver,
)
from captum_coar.stores import InMemoryStore

N = 12  # hidden neurons of the additive model


def _setup(n=5):
    return additive_neurons(n, N)


# ----------------------------------------------------------------------------- the rule
def test_the_rule_is_least_squares_above_three_n_training_masks():
    assert default_solver(3 * N, N) == "eb_ridge"
    assert default_solver(3 * N + 1, N) == "least_squares"
    model, components, _, _ = _setup()
    coar = ComponentAblationRegression(model, components)
    assert [coar.default_solver(m) for m in (3 * N, 3 * N + 1)] == ["eb_ridge", "least_squares"]


@pytest.mark.parametrize("n_train, expected", [(3 * N, "eb_ridge"), (3 * N + 1, "least_squares")])
def test_every_path_applies_the_rule_to_its_training_masks(n_train, expected):
    model, components, x, y = _setup()
    coar = ComponentAblationRegression(model, components)
    data = tensor_batches(x, y)
    common = dict(ablation_fraction=0.3, seed=1)
    n_masks = n_train + 5  # 5 held-out rows
    coar.attribute(x, target=y, n_masks=n_masks, validation_fraction=5 / n_masks, **common)
    assert coar.last_result_.n_masks == n_train
    solvers = {"attribute": coar.last_result_.fit.solver}
    stats = coar.collect_statistics(data, n_masks=n_masks, validation_fraction=5 / n_masks,
                                    **common)
    solvers["collect_statistics + fit"] = coar.fit(stats).fit.solver
    store = coar.collect(data, InMemoryStore(), n_masks=n_masks, **common)
    solvers["fit(store)"] = coar.fit(store, validation_fraction=5 / n_masks).fit.solver
    solvers["fit(store, rows)"] = coar.fit(store, rows=(0, n_train)).fit.solver
    rule = StopWhen(first_masks=n_train, max_masks=n_train, n_validation=5)
    solvers["collect_until"] = collect_until(coar, data, rule, **common)[0].fit.solver
    coar.attribute(x, target=y, stop_when=rule, **common)
    solvers["attribute(stop_when)"] = coar.last_result_.fit.solver
    assert solvers == dict.fromkeys(solvers, expected)


def test_every_path_asks_the_one_rule(monkeypatch):
    asked = []

    def rule(n_train, n_components):
        asked.append(n_train)
        return "difference_of_means"  # defined at any number of masks

    monkeypatch.setattr(choice, "default_solver", rule)
    model, components, x, y = _setup()
    coar = ComponentAblationRegression(model, components)
    data = tensor_batches(x, y)
    coar.attribute(x, target=y, n_masks=40, validation_fraction=0.25, ablation_fraction=0.3)
    stats = coar.collect_statistics(data, n_masks=40, ablation_fraction=0.3)
    fits = [coar.last_result_, coar.fit(stats),
            coar.fit(coar.collect(data, n_masks=40, ablation_fraction=0.3),
                     validation_fraction=0.25),
            collect_until(coar, data, StopWhen(criterion="correlation", first_masks=20,
                                               max_masks=40, n_validation=10),
                          ablation_fraction=0.3)[0]]
    assert [f.fit.solver for f in fits] == ["difference_of_means"] * 4
    assert asked[:3] == [30, 40, 30] and set(asked[3:]) == {20}


# ----------------------------------------------------------------------------- checks
def test_check_declares_constraints_and_fits_nothing(monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("check must not fit")

    for cls in (LeastSquares, Ridge, Lasso, AutoRidge, AutoLasso, DifferenceOfMeans):
        monkeypatch.setattr(cls, "_fit", no_fit)
    monkeypatch.setattr(MinibatchRidge, "fit", no_fit)
    LeastSquares().check(N + 1, 3, False, N)
    Ridge(alphas=[1.0, 2.0]).check(3, 3, True, N)
    AutoLasso(prior=torch.zeros(3, N)).check(3, 3, True, N)
    AutoRidge(prior=torch.zeros(N)).check(3, 1, False, N)  # one example: a 1-D prior
    MinibatchRidge().check(2, None, False)
    with pytest.raises(ValueError, match=r"m=12 masks for N=12 components: too small"):
        LeastSquares().check(N, 3, False, N)
    LeastSquares().check(N, 3, False)  # without N the size rule is skipped
    with pytest.raises(ValueError, match="needs at least 2 training masks"):
        DifferenceOfMeans().check(1, 3, False, N)
    with pytest.raises(TypeError, match=r"`Ridge standard_errors` must be True or False; got str"):
        Ridge(standard_errors="yes").check(30, 3, False, N)
    with pytest.raises(ValueError, match=r"`Lasso eps` must be a finite number > 0 and < 1"):
        Lasso(alpha=0.1, eps=1.0).check(30, 3, False, N)
    with pytest.raises(ValueError, match=r"`AutoRidge max_ratio` must be > min_ratio = 1"):
        AutoRidge(min_ratio=1.0, max_ratio=0.5).check(30, 3, False, N)
    with pytest.raises(TypeError, match=r"`MinibatchRidge dtype` must be a floating"):
        MinibatchRidge(dtype="float32").check(30, 3, False, N)
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(3, 12\)"):
        AutoRidge(prior=torch.zeros(2, N)).check(30, 3, False, N)
    assert [s.gives_standard_errors for s in (LeastSquares(), Ridge(), AutoRidge(),
                                               Ridge(standard_errors=False), Lasso(),
                                               AutoLasso(), DifferenceOfMeans(),
                                               MinibatchRidge())] == [True] * 3 + [False] * 5


BAD = [
    (Ridge(alpha=-1.0), r"`Ridge alpha` must be a finite number >= 0 or None; got -1"),
    (Ridge(alphas=[1.0, 2.0]), "2 alphas were given but no validation_stats"),
    (Lasso(), "automatic path of n_alphas=20 penalties needs validation_stats"),
    (AutoLasso(), r"`validation_stats` must be statistics of held-out rows"),
    (AutoRidge(criterion="validation"), "criterion='validation'"),
    (AutoRidge(prior=torch.zeros(4, N)), r"`prior` must be a tensor of shape \(5, 12\)"),
    (MinibatchRidge(epochs=0), r"`MinibatchRidge epochs` must be an integer >= 1; got 0"),
    ("least_squares", r"m=12 masks for N=12 components: too small for least squares"),
]


@pytest.mark.parametrize("solver, why", BAD, ids=[f"{s!r}"[:40] for s, _ in BAD])
def test_attribute_refuses_a_solver_before_any_forward_pass(solver, why):
    model, components, x, y = _setup()
    counter = CountingForward(model)
    coar = ComponentAblationRegression(counter, components)
    n_masks = N if solver == "least_squares" else 60
    with pytest.raises(ValueError, match=rf"n_masks={n_masks} \({n_masks} for training\),"
                       rf" checked before collection: solver \w+ \('\w+'\) refuses its"
                       rf" arguments: .*{why}"):
        coar.attribute(x, target=y, n_masks=n_masks, solver=solver)
    with pytest.raises(ValueError, match=r"adaptive collection .*refuses its arguments"):
        coar.attribute(x, target=y, solver=solver, stop_when=StopWhen(
            first_masks=N, max_masks=2 * N, n_validation=5))
    assert counter.calls == 0


def test_collect_until_refuses_before_any_forward_pass():
    model, components, x, y = _setup()
    counter = CountingForward(model)
    coar = ComponentAblationRegression(counter, components)
    rule = StopWhen(first_masks=N, max_masks=2 * N, n_validation=5)
    with pytest.raises(ValueError, match=r"\(12 training masks in the first round\): solver"
                       r" LeastSquares \('least_squares'\) refuses its arguments"):
        collect_until(coar, tensor_batches(x, y), rule, "least_squares")
    with pytest.raises(ValueError, match="solver AutoLasso"):
        collect_until(coar, tensor_batches(x, y), rule, AutoLasso())
    assert counter.calls == 0


def test_fit_checks_the_solver_against_the_data():
    model, components, x, y = _setup()
    coar = ComponentAblationRegression(model, components)
    stats = coar.collect_statistics(tensor_batches(x, y), n_masks=30, ablation_fraction=0.3)
    with pytest.raises(ValueError, match=r"statistics of 30 training masks: solver AutoLasso"
                       r" \('lasso_auto'\) refuses its arguments"):
        coar.fit(stats, solver="lasso_auto")
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(5, 12\)"):
        coar.fit(stats, solver=AutoRidge(prior=torch.zeros(5, 11)))


# ----------------------------------------------------------------------------- identity
def test_identity_is_computed_once_per_call(monkeypatch):
    model, components, x, y = _setup()
    coar = ComponentAblationRegression(model, components)
    stats = coar.collect_statistics(tensor_batches(x, y), n_masks=40, ablation_fraction=0.3)
    fingerprints = []
    real = identity_module.model_fingerprint
    monkeypatch.setattr(identity_module, "model_fingerprint",
                        lambda m: fingerprints.append(1) or real(m))
    coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.3)
    assert len(fingerprints) == 1  # the collection's; the fit reuses it
    from_attribute = coar.last_result_
    coar.fit(stats)
    assert len(fingerprints) == 2  # the estimator's side, to compare with the data's record
    torch.testing.assert_close(coar.last_result_.attributions, from_attribute.attributions)
    for key in ("model_fingerprint", "components_fingerprint", "probe", "sampler"):
        assert coar.last_result_.settings[key] == from_attribute.settings[key]
