"""The shared preflight: every public entry point refuses the same faults with a message naming
the problem, before any forward pass of the gated model, never writes the caller's tensors, and
gives the same numbers as without the preflight on a clean deterministic model."""

import importlib
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import captum_coar
from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAttributionPatching,
    ComponentIntegratedGradients,
    GatedForward,
    _preflight,
    counterfactual_correlation,
    topk_ablation_curve,
)
from captum_coar.baselines import (
    ComponentConductance,
    ComponentGradientXParameter,
    ComponentInternalInfluence,
    ComponentRelevancePatching,
)
from captum_coar.coar import collect_statistics, tensor_batches
from captum_coar.editing import coar_edit, edit_curve
from captum_coar.gates import ComponentGates
from captum_coar.selectors import linear_neurons


class Noisy(nn.Module):
    """Random in training mode through F.dropout: no attribute says so, only the probe sees it."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, 0.3, self.training)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.drop = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5)
        self.noisy, self.fc2 = Noisy(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.noisy(self.drop(torch.relu(self.bn(self.fc1(x))))))


def setup():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(5, 4)
    return model, linear_neurons(model, ["fc1"]), x, torch.tensor([0, 1, 2, 1, 0])


def _attr(n, N):
    return torch.randn(n, N, generator=torch.Generator().manual_seed(1))


# name -> f(forward, components, inputs, target): each public entry point once
ENTRY_POINTS = {
    "coar": lambda f, c, x, y: ComponentAblationRegression(f, c).attribute(
        x, target=y, n_masks=30, ablation_fraction=0.3),
    "collect_statistics": lambda f, c, x, y: collect_statistics(
        f, c, tensor_batches(x, y), n_masks=8).train.xty,
    "leave_one_out": lambda f, c, x, y: ComponentAblation(f, c).attribute(
        x, target=y, perturbations_per_eval=1),
    "attribution_patching": lambda f, c, x, y: ComponentAttributionPatching(f, c).attribute(
        x, target=y),
    "relevance_patching": lambda f, c, x, y: ComponentRelevancePatching(
        f, c, require_attention=False).attribute(x, target=y),
    "integrated_gradients": lambda f, c, x, y: ComponentIntegratedGradients(f, c).attribute(
        x, target=y, n_steps=3),
    "gradient_x_parameter": lambda f, c, x, y: ComponentGradientXParameter(f, c).attribute(
        x, target=y),
    "conductance": lambda f, c, x, y: ComponentConductance(f, c).attribute(
        x, target=y, n_steps=3),
    "internal_influence": lambda f, c, x, y: ComponentInternalInfluence(f, c).attribute(
        x, target=y, n_steps=3),
    "gated_forward": lambda f, c, x, y: GatedForward(f, c, output="margin")(
        torch.ones(x.shape[0], c.n_components), x, y),
    "counterfactual_correlation": lambda f, c, x, y: counterfactual_correlation(
        f, c, x, _attr(x.shape[0], c.n_components), target=y, n_masks=4,
        ablation_fractions=0.5, perturbations_per_eval=1).values,
    "topk_ablation_curve": lambda f, c, x, y: topk_ablation_curve(
        f, c, x, _attr(x.shape[0], c.n_components), target=y, ks=[0, 2]).outputs,
    "edit_curve": lambda f, c, x, y: edit_curve(
        f, c, torch.arange(c.n_components), [0, 2], x, y, x, y, metric="margin").target,
    "coar_edit": lambda f, c, x, y: coar_edit(
        f, c, _attr(4, c.n_components), _attr(4, c.n_components) + 1, "lower", [1],
        validation=(x, y, x, y), metric="margin").curve.target,
}
METHODS = sorted(ENTRY_POINTS)
PATHS = ("conductance", "internal_influence")  # interpolate the inputs (leaves needing grad)


def assert_same(got, expected):
    got, expected = torch.as_tensor(got), torch.as_tensor(expected)
    assert not torch.isnan(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


class GatedForwardCounter:
    """Counts forward passes run while gate hooks are entered (gated passes)."""

    def __init__(self, monkeypatch):
        self.gated = 0
        original = ComponentGates.__enter__

        def enter(gates):
            self.gated += 1
            return original(gates)

        monkeypatch.setattr(ComponentGates, "__enter__", enter)


def refused(method, forward, components, x, y, monkeypatch, match):
    counter = GatedForwardCounter(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            ENTRY_POINTS[method](forward, components, x, y)
    assert counter.gated == 0, f"{method} entered the gates before refusing"


@pytest.mark.parametrize("method", METHODS)
def test_empty_batch(method, monkeypatch):
    model, components, x, y = setup()
    refused(method, model, components, x[:0], y[:0], monkeypatch,
            r"inputs` must (hold|be a tensor with) at least one example on dim 0; got")


@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_inputs(method, monkeypatch):
    model, components, x, y = setup()
    x[3, 1], x[4, 0] = float("nan"), float("inf")
    refused(method, model, components, x, y, monkeypatch,
            r"inputs` must be finite; got 1 NaN and 1 infinite value\(s\).*rows \[3, 4\]")


@pytest.mark.parametrize("method", METHODS)
def test_target_outside_the_classes(method, monkeypatch):
    model, components, x, _ = setup()
    y = torch.tensor([0, 1, 7, 2, 0])
    refused(method, model, components, x, y, monkeypatch,
            r"`target` must hold class indices in \[0, n_classes\) = \[0, 3\).*got \[7\] at"
            r" rows \[2\]")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("module", ["bn", "drop"])
def test_random_module_in_training_mode(method, module, monkeypatch):
    model, components, x, y = setup()
    getattr(model, module).train()
    kind = "BatchNorm1d" if module == "bn" else "Dropout"
    refused(method, model, components, x, y, monkeypatch,
            rf"1 module\(s\) are in training mode.*'{module}' \({kind}.*eval mode")


@pytest.mark.parametrize("method", METHODS)
def test_probe_names_the_modules_in_training_mode(method, monkeypatch):
    model, components, x, y = setup()
    model.noisy.train()  # random through F.dropout: only the probe can tell
    refused(method, model, components, x, y, monkeypatch,
            r"not deterministic: the same 2 example\(s\) run twice.*modules in training mode:"
            r" 'noisy'")


@pytest.mark.parametrize("method", METHODS)
def test_random_operations_in_forward(method, monkeypatch):
    model, components, x, y = setup()

    def forward(inputs):
        return model(inputs + 0.1 * torch.randn_like(inputs))

    refused(method, forward, components, x, y, monkeypatch,
            r"not deterministic.*no module is in training mode, so the forward function itself"
            r" is random")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fault", ["nan", "overflow"])
def test_outputs_not_finite_or_overflowing(method, fault, monkeypatch):
    model, components, x, y = setup()
    scale = float("inf") if fault == "nan" else 1e25  # inf - inf = NaN margins

    def forward(inputs):
        return model(inputs) * scale

    match = (r"WITHOUT ablation is not finite for example\(s\) \[0, 1\]" if fault == "nan"
             else r"reaches [0-9.]+e\+2[0-9] in magnitude, beyond 1.84e\+19")
    refused(method, forward, components, x, y, monkeypatch, match)


def test_a_deterministic_model_in_training_mode_is_accepted():
    model, components, x, y = setup()
    plain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).train()
    ComponentAblation(plain, linear_neurons(plain, ["0"])).attribute(x, target=y)


@pytest.mark.parametrize("method", METHODS)
def test_caller_tensors_never_written(method):
    """The forward adds 1 to its input IN PLACE: the caller's tensor stays, and every pass
    sees the original rows (the results equal a forward that adds 1 out of place)."""
    model, components, x, y = setup()
    before = x.clone()

    def in_place(inputs):
        inputs.add_(1.0)
        return model(inputs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method in PATHS:  # autograd refuses writes into the interpolated inputs
            with pytest.raises(RuntimeError, match="in-place operation"):
                ENTRY_POINTS[method](in_place, components, x, y)
            assert torch.equal(x, before)
            return
        got = ENTRY_POINTS[method](in_place, components, x, y)
        assert torch.equal(x, before)
        expected = ENTRY_POINTS[method](lambda inputs: model(inputs + 1.0), components, x, y)
    assert_same(got, expected)


def _without_preflight(monkeypatch):
    def skipped(method, forward_func, components, inputs, *args, **kwargs):
        return _preflight.Preflight(method, int(torch.as_tensor(inputs).shape[0]))

    for name, module in list(sys.modules.items()):
        if name.startswith("captum_coar") and getattr(module, "preflight", None) is \
                _preflight.preflight:
            monkeypatch.setattr(module, "preflight", skipped)


@pytest.mark.parametrize("method", METHODS)
def test_clean_model_same_numbers_as_without_preflight(method, monkeypatch):
    model, components, x, y = setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(3)
        with_preflight = ENTRY_POINTS[method](model, components, x, y)
        _without_preflight(monkeypatch)
        torch.manual_seed(3)
        without = ENTRY_POINTS[method](model, components, x, y)
    assert_same(with_preflight, without)


def test_every_entry_point_module_runs_the_preflight():
    for name in ("editing_sets", "editing_gates"):
        importlib.import_module(f"captum_coar.{name}")
    users = {name for name, module in sys.modules.items() if name.startswith("captum_coar")
             and getattr(module, "preflight", None) is _preflight.preflight}
    assert {"captum_coar.baselines._base", "captum_coar.coar.estimator",
            "captum_coar.coar.collection", "captum_coar.evaluation", "captum_coar.interop",
            "captum_coar.editing_sets", "captum_coar.editing_gates"} <= users
    assert captum_coar.ComponentAtPStar._start is captum_coar.ComponentAblation._start


def test_probe_cost_is_two_forwards_of_two_rows():
    model, components, x, y = setup()
    rows = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        report = _preflight.preflight("test", model, components, x, y, None,
                                      captum_coar.outputs.resolve_output("margin", y))
    finally:
        handle.remove()
    assert rows == [2, 2] and report.classes == (3, "n_classes")


def test_gated_forward_probes_once_and_again_after_a_mode_change():
    model, components, x, y = setup()
    gated = GatedForward(model, components, output="margin")
    rows = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        for _ in range(3):
            gated(gated.kept(5), x, y)
        assert rows == [2, 2, 5, 5, 5]
        model.fc2.train()  # a flag changed: probe again (Linear is not random: accepted)
        gated(gated.kept(5), x, y)
        assert rows[5:] == [2, 2, 5]
    finally:
        handle.remove()
    with pytest.raises(ValueError, match=r"\[0, 3\).*got \[9\]"):
        gated(gated.kept(5), x, torch.tensor([0, 1, 9, 2, 0]))


def test_atp_star_refuses_a_token_outside_the_vocabulary(monkeypatch):
    from toy_models import tiny_gpt2

    from captum_coar import ComponentAtPStar, ComponentSet

    model = tiny_gpt2(n_layer=1, n_head=2, n_embd=8, vocab=16)
    heads = ComponentSet.from_model(model, kinds="attention_heads")
    ids = torch.randint(0, 16, (3, 5), generator=torch.Generator().manual_seed(0))
    counter = GatedForwardCounter(monkeypatch)
    with pytest.raises(ValueError, match=r"ComponentAtPStar: `target` must hold token ids \(or"
                                         r" -100 padding\) in \[0, vocab_size\) = \[0, 16\).*"
                                         r"got \[99\] at rows \[1\]"):
        ComponentAtPStar(model, heads).attribute(ids, target=torch.tensor([1, 99, 2]),
                                                 output="token_log_prob")
    assert counter.gated == 0
