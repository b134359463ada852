"""The user's model is left as it was: parameters AND buffers (BatchNorm running statistics,
``num_batches_tracked``) bit-identical, and every module's train/eval flag unchanged, after
every public entry point, in train mode (refused by the preflight, except by the engine's
evaluate_masks) and in eval mode, after success and after an error."""

import warnings

import pytest
import torch
from toy_models import ConvNet, randomise_batchnorm

from captum_coar import baselines
from captum_coar._engine import evaluate_masks
from captum_coar._state import model_state_kept
from captum_coar.coar import ComponentAblationRegression, tensor_batches
from captum_coar.evaluation import counterfactual_correlation, topk_ablation_curve
from captum_coar.interop import GatedForward
from captum_coar.selectors import conv_filters


def _setup(train: bool):
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet())
    model.train(train)
    components = conv_filters(model)
    x = torch.randn(4, 1, 6, 6)
    y = torch.tensor([1, 2, 3, 4])
    return model, components, x, y


def _coar(model, components, x, y):
    ComponentAblationRegression(model, components).attribute(x, target=y, n_masks=60)


def _coar_collect(model, components, x, y):
    coar = ComponentAblationRegression(model, components)
    store = coar.collect(tensor_batches(x, y), n_masks=60)
    coar.fit(store)
    coar.fit(coar.collect_statistics(tensor_batches(x, y), n_masks=60))


def _baseline(cls, **kwargs):
    def run(model, components, x, y):
        cls(model, components).attribute(x, target=y, **kwargs)
    run.__name__ = cls.__name__
    return run


def _evaluate_masks(model, components, x, y):
    evaluate_masks(model, components, x, torch.ones(3, components.n_components), target=y)


def _gated_forward(model, components, x, y):
    gated = GatedForward(model, components, output="margin")
    gated(torch.ones(4, components.n_components), x, y)


def _correlation(model, components, x, y):
    counterfactual_correlation(model, components, x, torch.randn(4, components.n_components),
                               target=y, n_masks=10)


def _topk(model, components, x, y):
    topk_ablation_curve(model, components, x, torch.randn(4, components.n_components), target=y)


ENTRY_POINTS = [
    _coar, _coar_collect, _evaluate_masks, _gated_forward, _correlation, _topk,
    _baseline(baselines.ComponentAblation),
    _baseline(baselines.ComponentConductance, n_steps=4),
    _baseline(baselines.ComponentInternalInfluence, n_steps=4),
    _baseline(baselines.ComponentIntegratedGradients, n_steps=4),
    _baseline(baselines.ComponentAttributionPatching),
    _baseline(baselines.ComponentGradientXParameter),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__.strip("_"))
def test_parameters_buffers_and_modes_are_unchanged(entry, train):
    model, components, x, y = _setup(train)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if train and entry is not _evaluate_masks:  # the preflight refuses BatchNorm in training
            with pytest.raises(ValueError, match="in training mode"):
                entry(model, components, x, y)
        else:
            entry(model, components, x, y)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert [m.training for m in model.modules()] == modes


def test_train_mode_forward_would_change_the_buffers():
    """The check above can fail: a plain forward in train mode moves the running statistics."""
    model, _, x, _ = _setup(True)
    before = model.bn1.running_mean.clone()
    with torch.no_grad():
        model(x)
    assert not torch.equal(before, model.bn1.running_mean)


def test_state_is_restored_after_an_error_and_changed_parameters_are_named():
    model, components, x, y = _setup(True)
    before = model.bn1.running_mean.clone()
    with pytest.raises(KeyboardInterrupt):
        with model_state_kept(model):
            model(x)
            raise KeyboardInterrupt
    assert torch.equal(before, model.bn1.running_mean)
    with pytest.raises(RuntimeError, match="conv1.weight"):
        with model_state_kept(model):
            with torch.no_grad():
                model.conv1.weight.mul_(2.0)
