"""The patching workflow: activation_patching's metrics, grids and plots, and baselines= in
evaluation and in Captum's own methods through GatedForward."""

import matplotlib
import pytest
import torch
from captum.attr import FeatureAblation
from transformers import GPT2Config, GPT2LMHeadModel

from captum_coar import (
    ComponentAblation,
    GatedForward,
    activation_patching,
    attention_heads,
    counterfactual_correlation,
    linear_neurons,
    plot_patching_grid,
    residual_stream,
    topk_ablation_curve,
)
from captum_coar.language_outputs import LanguageModelForward
from captum_coar.patching_plots import head_grid
from captum_coar.positions import at_positions
from captum_coar.testing import AdditiveNet

matplotlib.use("Agg")

VOCAB, SEQ = 30, 5


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=8,
                                       vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)).eval()
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(1, VOCAB, (4, SEQ), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = (clean[:, 1] + 5) % (VOCAB - 1) + 1
    target = torch.randint(1, VOCAB, (4, 2), generator=generator)
    return model, clean, corrupted, target


def test_activation_patching_metrics_match_their_definitions(gpt2):
    model, clean, corrupted, target = gpt2
    forward = LanguageModelForward(model)
    components = residual_stream(model, seq_len=SEQ)
    result = activation_patching(forward, components, corrupted, clean, target=target,
                                 output="logit_difference", direction="denoising")
    with torch.no_grad():
        def diff(ids):
            logits = model(ids).logits[:, -1]
            return logits.gather(1, target)[:, 0] - logits.gather(1, target)[:, 1]
        torch.testing.assert_close(result.input_value, diff(corrupted))
        torch.testing.assert_close(result.baseline_value, diff(clean))
    patched = result.input_value[:, None] - result.effects
    expected = (patched - diff(corrupted)[:, None]) / (diff(clean) - diff(corrupted))[:, None]
    torch.testing.assert_close(result.normalized, expected)
    # restoring the whole residual stream at the last block and last position restores all
    last = components.index(components.groups[-1].module_name, SEQ - 1)
    torch.testing.assert_close(result.normalized[:, last], torch.ones(4), atol=1e-4, rtol=0)
    grid, rows, columns = result.grid()
    assert grid.shape == (2, SEQ) and rows == [g.module_name for g in components.groups]
    assert "denoising" in result.sign and "logit_difference" in result.sign
    ax = plot_patching_grid(grid, rows, columns, output="logit_difference")
    assert "Activation patching" in ax.get_title() and ax.figure.axes  # colour bar too
    assert result.top(3)[0][0] in components.labels


def test_equal_outputs_give_nan_normalised_rows_with_a_warning(gpt2):
    model, clean, corrupted, target = gpt2
    components = attention_heads(model)
    same = clean.clone()
    with pytest.warns(UserWarning, match="normalised effects are NaN"):
        result = activation_patching(LanguageModelForward(model), components, clean, same,
                                     target=target, output="logit_difference")
    assert torch.isnan(result.normalized).all()
    assert torch.all(result.effects == 0)  # patching from an identical prompt changes nothing


def test_head_grid_and_positions_on_heads(gpt2):
    model, clean, corrupted, target = gpt2
    heads = attention_heads(model)
    grid, rows, columns = head_grid(heads, torch.arange(4.0))
    assert grid.tolist() == [[0.0, 1.0], [2.0, 3.0]] and columns == ["0", "1"]
    with pytest.raises(ValueError, match="no positions"):
        head_grid(at_positions(heads, [0]), torch.zeros(4))


def test_answer_probability_is_the_exp_of_the_token_log_prob(gpt2):
    model, clean, _, target = gpt2
    forward = LanguageModelForward(model)
    components = attention_heads(model)
    probability = activation_patching(forward, components, clean, clean.flip(0),
                                      target=target[:, 0], output="answer_probability")
    with torch.no_grad():
        truth = torch.softmax(model(clean).logits[:, -1], -1).gather(1, target[:, :1])[:, 0]
    torch.testing.assert_close(probability.input_value, truth)


def test_evaluation_and_captum_methods_take_baselines():
    model = AdditiveNet(n_in=5, n_hidden=7, n_classes=3).eval()
    components = linear_neurons(model, ["hidden"])
    generator = torch.Generator().manual_seed(4)
    x, base = torch.randn(5, 5, generator=generator), torch.randn(5, 5, generator=generator)
    target = torch.tensor([0, 1, 2, 0, 1])
    exact = ComponentAblation(model, components).attribute(x, target=target, baselines=base,
                                                           output="logit")
    # exact attributions of an additive model predict every patched mask perfectly
    result = counterfactual_correlation(model, components, x, exact, target=target,
                                        output="logit", baselines=base, n_masks=20,
                                        ablation_fractions=0.3)
    assert result.mean() > 0.999
    # ... and the same attributions do not predict weight ablations (another question)
    other = counterfactual_correlation(model, components, x, exact, target=target,
                                       output="logit", n_masks=20, ablation_fractions=0.3)
    assert other.mean() < 0.99
    # Captum's FeatureAblation on the patched gates is leave-one-out with baselines
    gated = GatedForward(model, components, output="logit", baselines=base)
    captum = FeatureAblation(gated).attribute(gated.kept(5), baselines=0.0,
                                              additional_forward_args=gated.forward_args(
                                                  x, target))
    torch.testing.assert_close(captum, exact)
    with pytest.raises(ValueError, match="exactly the inputs' shape"):
        gated(gated.kept(4), x[:4], target[:4])
    curve = topk_ablation_curve(model, components, x, exact, target=target, output="logit",
                                baselines=base, ks=[0, 7])
    with torch.no_grad():  # every component patched = the model on the baselines
        torch.testing.assert_close(curve.outputs[0, 1].float(),
                                   model(base).gather(1, target[:, None])[:, 0])
