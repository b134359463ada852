"""ComponentAblationRegression: exact recovery, reference fits, invariances, Captum workflow, errors."""

import math
import warnings

import numpy as np
import pytest
import torch
from coar_fixtures import digits_cnn
from toy_models import (
    ConvNet,
    assert_unchanged,
    hook_count,
    randomise_batchnorm,
    snapshot,
)

from captum_coar.coar import COARResult, ComponentAblationRegression, tensor_batches
from captum_coar.sampling import BernoulliSampler, FixedFractionSampler
from captum_coar.selectors import conv_filters, linear_neurons
from captum_coar.solvers import Lasso, LeastSquares, MinibatchRidge, Ridge
from captum_coar.stores import InMemoryStore
from captum_coar.testing import AdditiveNet


def _additive(n=6, dtype=torch.float64):
    torch.manual_seed(0)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=12, n_classes=3, seed=0).to(dtype).eval()
    x = torch.randn(n, 6, dtype=dtype)
    y = torch.arange(n) % 3
    return model, linear_neurons(model, ["hidden"]), x, y


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_cnn()
    components = conv_filters(model, ["conv1", "conv2"])
    return model, components, x[:6], y[:6]


# ----------------------------------------------------------------------------- exact recovery
@pytest.mark.parametrize("solver", [
    "least_squares", LeastSquares(), Ridge(alpha=1e-9), Lasso(alpha=1e-12, tol=1e-14, max_iter=20000),
])
def test_exact_recovery_on_additive_model(solver):
    model, components, x, y = _additive()
    coar = ComponentAblationRegression(model, components)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lasso warns that a tiny alpha is least squares
        attributions = coar.attribute(x, target=y, output="logit", n_masks=120, solver=solver,
                                      ablation_fraction=0.3)
    truth = model.effects(x, y).detach()
    assert attributions.shape == (6, 12)
    assert attributions.dtype == torch.float64
    torch.testing.assert_close(attributions, truth, atol=1e-4, rtol=0)
    # the intercept is the output with every component ablated (hidden = bias)
    all_ablated = model.readout(model.hidden.bias.expand(6, -1)).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(coar.last_result_.intercept, all_ablated.detach(), atol=1e-4, rtol=0)


def test_exact_recovery_float32_model_and_result_object():
    model, components, x, y = _additive(dtype=torch.float32)
    coar = ComponentAblationRegression(model, components)
    attributions = coar.attribute(x, target=y, output="logit", n_masks=200, validation_fraction=0.2,
                                  ablation_fraction=0.2)
    assert attributions.dtype == torch.float32
    torch.testing.assert_close(attributions, model.effects(x, y).detach(), atol=1e-4, rtol=0)
    result = coar.last_result_
    assert isinstance(result, COARResult)
    assert (result.n_masks, result.n_validation) == (160, 40)
    assert result.diagnostics["validation_mse"] < 1e-8
    keep = torch.ones(1, 12)
    torch.testing.assert_close(result.predict(keep)[0], model(x).gather(1, y[:, None]).squeeze(1),
                               atol=1e-4, rtol=0)
    assert set(result.split()) == {"hidden"}
    assert result.settings["sampler"]["name"] == "bernoulli"


def test_sign_convention_positive_pushes_output_up():
    model, components, x, y = _additive()
    with torch.no_grad():
        model.readout.weight.zero_()
        model.readout.weight[:, 3] = 2.0  # neuron 3 alone drives every logit
    h3 = (model.hidden(x) - model.hidden.bias)[:, 3].detach()
    coar = ComponentAblationRegression(model, components)
    a = coar.attribute(x, target=y, output="logit", n_masks=100, ablation_fraction=0.2)
    torch.testing.assert_close(a[:, 3], 2 * h3, atol=1e-6, rtol=0)
    assert torch.all(torch.sign(a[:, 3]) == torch.sign(h3))


def test_streaming_solver_approximates_least_squares():
    model, components, x, y = _additive()
    coar = ComponentAblationRegression(model, components)
    exact = coar.attribute(x, target=y, output="logit", n_masks=256, ablation_fraction=0.3)
    approx = coar.attribute(x, target=y, output="logit", n_masks=256, ablation_fraction=0.3,
                            solver=MinibatchRidge(epochs=60, lr=0.05))
    corr = np.corrcoef(exact.flatten().numpy(), approx.flatten().numpy())[0, 1]
    assert corr > 0.99


# ----------------------------------------------------------------------------- trained CNN
def test_least_squares_matches_numpy_reference_on_trained_cnn(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    store = coar.collect(tensor_batches(x, y, batch_size=4), InMemoryStore(), n_masks=180,
                         ablation_fraction=0.1, seed=3)
    result = coar.fit(store, solver="least_squares")
    masks = store.read_masks().double().numpy()
    outputs = store.read_outputs().double().numpy()
    design = np.hstack([np.ones((masks.shape[0], 1)), masks])
    reference, *_ = np.linalg.lstsq(design, outputs, rcond=None)
    np.testing.assert_allclose(result.fit.coef.numpy(), reference[1:].T, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(result.fit.intercept.numpy(), reference[0], rtol=1e-7, atol=1e-8)
    # attribute() on the same examples collects the same masks and outputs: same answer
    direct = coar.attribute(x, target=y, n_masks=180, ablation_fraction=0.1, seed=3)
    torch.testing.assert_close(direct, result.attributions, atol=1e-4, rtol=1e-4)


def test_lasso_matches_sklearn_on_trained_cnn(digits):
    from sklearn.linear_model import Lasso as SkLasso

    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    store = coar.collect(tensor_batches(x[:3], y[:3]), n_masks=150, ablation_fraction=0.1)
    result = coar.fit(store, solver=Lasso(alpha=0.01, tol=1e-12, max_iter=50000))
    masks = store.read_masks().double().numpy()
    outputs = store.read_outputs().double().numpy()
    for j in range(3):
        sk = SkLasso(alpha=0.01, tol=1e-12, max_iter=200000).fit(masks, outputs[:, j])
        np.testing.assert_allclose(result.fit.coef[j].numpy(), sk.coef_, atol=2e-5)
        np.testing.assert_allclose(float(result.fit.intercept[j]), sk.intercept_, atol=2e-5)
    assert (result.fit.coef == 0).any()  # the penalty is strong enough to zero some components


def test_ridge_alpha_chosen_on_held_out_rows(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    coar.attribute(x, target=y, n_masks=120, solver=Ridge(alphas=[1e-3, 1.0, 1e3, 1e6]),
                   validation_fraction=0.25)
    result = coar.last_result_
    assert result.n_validation == 30 and result.n_masks == 90
    chosen = set(result.fit.alpha.tolist())  # one penalty per example
    assert chosen <= {1e-3, 1.0, 1e3, 1e6}
    assert result.fit.validation_mse_path.shape == (4, 6)
    assert 1e6 not in chosen  # shrinking everything to zero is never best here


def test_fixed_fraction_sampler_with_ridge(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    a = coar.attribute(x, target=y, n_masks=100, sampler="fixed", ablation_fraction=0.1,
                       solver=Ridge(alpha=1e-2))
    assert a.shape == (6, components.n_components)
    assert coar.last_result_.settings["sampler"]["name"] == "fixed"
    b = coar.attribute(x, target=y, n_masks=100, sampler=FixedFractionSampler(0.1),
                       solver=Ridge(alpha=1e-2))
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- invariances
def test_same_seed_same_attributions_and_batching_invariance():
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model)
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([1, 2, 3])
    coar = ComponentAblationRegression(model, components)
    a = coar.attribute(x, target=y, n_masks=300, seed=7)
    b = coar.attribute(x, target=y, n_masks=300, seed=7)
    assert torch.equal(a, b)
    c = coar.attribute(x, target=y, n_masks=300, seed=8)
    assert not torch.allclose(a, c)
    for p in (1, 7, 300):
        d = coar.attribute(x, target=y, n_masks=300, seed=7, perturbations_per_eval=p)
        torch.testing.assert_close(d, a, atol=1e-4, rtol=1e-4)
    e = coar.attribute(x, target=y, n_masks=300, seed=7, sampler=BernoulliSampler(0.05))
    torch.testing.assert_close(e, a, atol=1e-4, rtol=1e-4)


def test_hooks_removed_and_parameters_unchanged():
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model)
    before = snapshot(model)
    coar = ComponentAblationRegression(model, components)
    x = torch.randn(2, 1, 6, 6)
    coar.attribute(x, target=0, n_masks=50, ablation_fraction=0.2)
    assert hook_count(model) == 0
    assert_unchanged(model, before)

    def boom(model_output, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        coar.attribute(x, target=0, n_masks=50, output=boom, ablation_fraction=0.2)
    assert hook_count(model) == 0
    assert_unchanged(model, before)


def test_training_mode_refused_only_where_it_is_random():
    """The preflight (tests/house/test_preflight.py) refuses random modules in training mode; a
    model without any gives the same attributions in both modes."""
    model, components, x, y = _additive(dtype=torch.float32)
    kwargs = dict(target=y, n_masks=60, ablation_fraction=0.2)
    evaluated = ComponentAblationRegression(model, components).attribute(x, **kwargs)
    model.train()
    assert torch.equal(ComponentAblationRegression(model, components).attribute(x, **kwargs),
                       evaluated)
    noisy = torch.nn.Sequential(model, torch.nn.Dropout(0.1)).train()
    with pytest.raises(ValueError, match=r"training mode.*'1' \(Dropout: dropout\)"):
        ComponentAblationRegression(noisy, linear_neurons(noisy, ["0.hidden"])).attribute(
            x, **kwargs)


def test_outputs_tuple_inputs_and_additional_args():
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x, z, scale):
            return self.out(torch.relu(self.a(x + z))) * scale

    torch.manual_seed(0)
    model = TwoInputs().eval()
    components = linear_neurons(model, ["a"])
    coar = ComponentAblationRegression(model, components)
    x, z = torch.randn(4, 4), torch.randn(4, 4)
    for output in ("margin", "logit", "log_prob", "loss"):
        (a,) = coar.attribute((x, z), target=[0, 1, 2, 0], additional_forward_args=(2.0,),
                              n_masks=90, output=output, ablation_fraction=0.2)
        assert a.shape == (4, 8) and torch.isfinite(a).all()
    # loss goes up when helpful components are ablated: opposite sign to log_prob
    kw = dict(target=[0, 1, 2, 0], additional_forward_args=(2.0,), n_masks=90, ablation_fraction=0.2)
    (lp,) = coar.attribute((x, z), output="log_prob", **kw)
    (loss,) = coar.attribute((x, z), output="loss", **kw)
    torch.testing.assert_close(lp, -loss, atol=1e-4, rtol=1e-4)
    (custom,) = coar.attribute((x, z), additional_forward_args=(2.0,), n_masks=90,
                               output=lambda out, target: out.sum(dim=1))
    assert custom.shape == (4, 8)


def test_sequence_margin_on_tiny_gpt2():
    from toy_models import tiny_gpt2

    from captum_coar.selectors import attention_heads

    model = tiny_gpt2(n_layer=1)
    components = attention_heads(model, ["transformer.h.0.attn.c_proj"], n_heads=4)
    coar = ComponentAblationRegression(lambda ids: model(ids).logits, components)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    a = coar.attribute(ids, target=ids, output="sequence_margin", n_masks=40, ablation_fraction=0.2)
    assert a.shape == (2, 4) and torch.isfinite(a).all()


# ----------------------------------------------------------------------------- Captum workflow
def test_log_usage_and_noise_tunnel():
    from captum.attr import NoiseTunnel

    assert hasattr(ComponentAblationRegression.attribute, "__wrapped__")
    model, components, x, y = _additive(n=3, dtype=torch.float32)
    coar = ComponentAblationRegression(model, components)
    nt = NoiseTunnel(coar)
    smoothed = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.01, target=y,
                            output="logit", n_masks=60, ablation_fraction=0.2)
    assert smoothed.shape == (3, 12)
    # COAR is exact here and the effects are linear in x, so smoothing only adds the effect of
    # the mean noise (stdev 0.01 / sqrt(3)): well below 1e-2 for this model's weights
    torch.testing.assert_close(smoothed, model.effects(x, y).detach(), atol=1e-2, rtol=0)


def test_sensitivity_max_with_coar_as_explanation():
    from captum.metrics import sensitivity_max

    model, components, x, y = _additive(n=3, dtype=torch.float32)
    coar = ComponentAblationRegression(model, components)
    sens = sensitivity_max(coar.attribute, x, target=y, output="logit", n_masks=40,
                           ablation_fraction=0.2, n_perturb_samples=2, perturb_radius=0.01)
    assert sens.shape == (3,) and torch.isfinite(sens).all()
    # the model is additive, so the attributions move little under a small perturbation
    assert float(sens.max()) < 0.2


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    model, components, x, y = _additive(dtype=torch.float32)
    coar = ComponentAblationRegression(model, components)
    with pytest.raises(ValueError, match=r"n_masks=12 .* too small for least squares.*12 components"):
        coar.attribute(x, target=y, n_masks=12, solver="least_squares")
    with pytest.raises(ValueError, match=r"n_masks=13 \(12 for training\)"):
        coar.attribute(x, target=y, n_masks=13, validation_fraction=0.1, solver="least_squares")
    # the default estimator at few masks is ridge with its penalty chosen automatically
    assert torch.isfinite(coar.attribute(x, target=y, n_masks=12)).all()
    assert coar.last_result_.fit.solver != "least_squares"
    for alpha in (0.0, 1.0, 1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="ablation_fraction"):
            coar.attribute(x, target=y, n_masks=100, ablation_fraction=alpha)
    with pytest.raises(ValueError, match="needs a target"):
        coar.attribute(x, n_masks=100, output="margin")
    with pytest.raises(ValueError, match="needs a target"):
        coar.attribute(x, n_masks=100)  # default output 'logit' of a 3-class model
    with pytest.raises(ValueError, match="target has 2 entries but inputs have 6 rows"):
        coar.attribute(x, target=[0, 1], n_masks=100)
    with pytest.raises(ValueError, match="same number of rows"):
        coar.attribute((x, x[:2]), target=y, n_masks=100)
    with pytest.raises(ValueError, match=r"`n_masks` must be an integer >= 1; got 0"):
        coar.attribute(x, target=y, n_masks=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        coar.attribute(x, target=y, n_masks=100, validation_fraction=1.0)
    with pytest.raises(ValueError, match=r"`solver` must be one of"):
        coar.attribute(x, target=y, n_masks=100, solver="newton")
    with pytest.raises(ValueError, match=r"`output` must be one of .*; got .softmax."):
        coar.attribute(x, target=y, n_masks=100, output="softmax")


def test_non_finite_outputs_name_masks_and_examples():
    model, components, x, y = _additive(dtype=torch.float32)
    coar = ComponentAblationRegression(model, components)

    def explodes_for_example_2(out, target):
        values = out.gather(1, torch.as_tensor(target)[:, None]).squeeze(1).clone()
        values[2::6] = float("inf")  # rows are mask-major: example 2 of every mask
        return values

    with pytest.raises(ValueError, match=r"not finite .*\(mask 0, example 2\).*examples \[2\]"):
        coar.attribute(x, target=y, n_masks=100, output=explodes_for_example_2)
