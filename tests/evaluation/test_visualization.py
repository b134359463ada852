"""Each plot renders to a PNG (Agg backend), accepts an ``ax``, returns it, and says in its labels
and legend what the output is, the sign convention and what every line means."""

import subprocess
import sys

import pytest
import torch
from toy_models import ConvNet, randomise_batchnorm

from captum_coar import Margin, SequenceMargin, conv_filters, linear_neurons
from captum_coar.evaluation import (
    TopKAblationCurve,
    counterfactual_correlation,
    topk_ablation_curve,
)
from captum_coar.testing import AdditiveNet

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from captum_coar.visualization import (  # noqa: E402
    METHOD_COLOURS,
    method_colours,
    output_label,
    plot_component_attributions,
    plot_correlation_bars,
    plot_counterfactual_scatter,
    plot_topk_curves,
)


@pytest.fixture(scope="module")
def scored():
    torch.manual_seed(0)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=30, n_classes=3, seed=0).eval()
    components = linear_neurons(model, ["hidden"])
    x, target = torch.randn(8, 6), torch.arange(8) % 3
    with torch.no_grad():
        effects = model.effects(x, target)
    methods = {"true effects": effects, "noisy": effects + 0.5 * torch.randn_like(effects),
               "random": torch.randn_like(effects)}
    result = counterfactual_correlation(model, components, x, methods, target=target,
                                        output="logit", ablation_fractions=(0.05, 0.1, 0.2),
                                        n_masks=60)
    curve = topk_ablation_curve(model, components, x, methods, target=target, output="logit",
                                max_fraction=0.5)
    return result, curve


def _check_png(ax, path):
    ax.figure.savefig(path, dpi=80, bbox_inches="tight")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    plt.close(ax.figure)


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_scatter(scored, tmp_path):
    result, _ = scored
    ax = plot_counterfactual_scatter(result, method="noisy", example=2, ablation_fraction=0.1, output="logit")
    assert "r = " in ax.get_title() and "noisy" in ax.get_title()
    legend = _legend(ax)
    assert "y = x" in legend and any(t.startswith("least-squares fit (slope") for t in legend)
    assert "unablated target logit" in legend and "one held-out mask (alpha = 0.1)" in legend
    assert ax.get_xlabel() == "predicted target logit"
    assert ax.get_ylabel() == "actual target logit under ablation"
    _check_png(ax, tmp_path / "scatter.png")
    with pytest.raises(KeyError, match="unknown method"):
        plot_counterfactual_scatter(result, method="nope")


def test_output_labels():
    assert output_label("margin") == "correct-class margin"
    assert output_label(Margin()) == "correct-class margin"
    assert output_label(SequenceMargin(start=3)) == "mean next-token margin"
    assert output_label(None) == "output" and output_label("my score") == "my score"

    def tail_probability(model_output, target):
        return model_output[:, 0]

    assert output_label(tail_probability) == "tail_probability"


def test_bars(scored, tmp_path):
    result, _ = scored
    ax = plot_correlation_bars(result, output="margin")
    assert len(ax.patches) == 3 * 3
    assert _legend(ax) == list(result.methods)
    assert "correct-class margin" in ax.get_ylabel() and "correct-class margin" in ax.get_title()
    assert "test ablation fraction" in ax.get_xlabel()
    _check_png(ax, tmp_path / "bars.png")


def test_topk_curves(scored, tmp_path):
    _, curve = scored
    ax = plot_topk_curves(curve, output="margin")
    assert len(ax.get_lines()) == 3
    assert ax.get_ylabel().startswith("correct-class margin after ablation")
    assert "normalised AUC" in ax.get_title()
    assert all("(avg " in text for text in _legend(ax))
    assert len({(line.get_marker(), line.get_linestyle()) for line in ax.get_lines()}) == 3
    _check_png(ax, tmp_path / "topk.png")
    ax = plot_topk_curves(curve, example=1, methods=["random"])
    assert len(ax.get_lines()) == 1 and "example 1" in ax.get_ylabel()
    plt.close(ax.figure)


def test_topk_curves_merge_identical_methods(scored):
    _, curve = scored
    doubled = TopKAblationCurve(ks=curve.ks, methods=curve.methods + ("copy of noisy",),
                                outputs=torch.cat([curve.outputs, curve.outputs[1:2]]),
                                n_components=curve.n_components)
    ax = plot_topk_curves(doubled)
    assert len(ax.get_lines()) == 3
    legend = _legend(ax)
    assert any(text.startswith("noisy = copy of noisy  (avg") for text in legend), legend
    plt.close(ax.figure)


def test_one_colour_per_method_in_every_plot(scored):
    from matplotlib.colors import to_hex

    result, curve = scored
    colours = method_colours(result.methods)
    assert len(set(colours.values())) == 3  # distinct within the figure
    assert method_colours(["random"])["random"] == METHOD_COLOURS["random (reference)"]
    bars = plot_correlation_bars(result, methods=["noisy", "true effects"])
    by_label = {}
    for container in bars.containers:
        if hasattr(container, "patches"):  # the bars (the error bars are containers too)
            by_label[container.get_label()] = to_hex(container.patches[0].get_facecolor())
    lines = plot_topk_curves(curve, methods=["true effects", "noisy"]).get_lines()
    by_line = {line.get_label().split("  (")[0]: to_hex(line.get_color()) for line in lines}
    dots = plot_counterfactual_scatter(result, method="noisy").collections[0].get_facecolor()[0]
    for shown in (by_label, by_line):  # the same colours whatever subset or order is drawn
        assert sorted(shown) == ["noisy", "true effects"]
        assert shown == {name: colours[name] for name in shown}
    assert to_hex(dots) == colours["noisy"]
    plt.close("all")
    # the package's methods keep their colour in any company; aliases name the same method
    demo = method_colours(["COAR", "leave-one-out", "AtP", "some method", "another one"])
    assert demo["COAR"] == METHOD_COLOURS["coar"] == method_colours(["x", "coar"])["coar"]
    assert demo["AtP"] == METHOD_COLOURS["attribution patching"]
    assert len(set(demo.values())) == 5


def test_component_attributions_on_given_axes(tmp_path):
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model, ["conv1", "conv2"]) + linear_neurons(model, ["fc1"])
    attributions = torch.randn(3, components.n_components)
    attributions[1, components.index("conv2", 5)] = 10.0
    fig, axes = plt.subplots(2, 1, figsize=(9, 7), layout="constrained")
    ax = plot_component_attributions(attributions, components, example=1, top_k=4, ax=axes[0],
                                     output="margin")
    assert ax is axes[0]
    assert "red (+) = supports the correct-class margin: ablating it lowers" in ax.get_xlabel()
    assert "correct-class margin" in ax.get_title()
    colorbar_labels = [other.get_ylabel() for other in fig.axes if other is not ax]
    assert "attribution (correct-class margin units)" in colorbar_labels
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "1. conv2/filter[5]" in texts
    assert [t.get_text() for t in ax.get_yticklabels()][1].startswith("conv2 (16 filters)")
    plot_component_attributions(attributions[0], components, top_k=0, ax=axes[1])
    _check_png(ax, tmp_path / "attributions.png")
    _check_png(plot_component_attributions(attributions, components, example=1),
               tmp_path / "attributions_alone.png")
    with pytest.raises(ValueError, match="n_components = 40"):
        plot_component_attributions(torch.randn(7), components)


def test_package_import_loads_no_matplotlib_beyond_what_captum_loads():
    code = ("import sys, captum.attr, captum.metrics; before = set(sys.modules);"
            " import captum_coar, captum_coar.visualization;"
            " print(sorted(m for m in set(sys.modules) - before if m.startswith('matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
