"""The three setups of the paper-table benchmark, the methods it runs, and how it counts cost.

Contract
--------
``build_setup(name, n_examples, quick=False, gpt2_mlp_layers="last") -> Setup`` loads (or
trains, through ``benchmarks.train.train_or_load``) one model and declares everything the
benchmark needs to attribute it:

- ``"resnet"`` (setup A): ResNetSmall on Fashion-MNIST; components = its conv filters without
  the two shortcut (downsample) convs, as in the paper's ResNet-50 count; COAR trained at
  alpha 0.05 and 0.10; output = correct-class margin of the true label.
- ``"vit"`` (setup B): ViTSmall on Fashion-MNIST; components = attention heads (input slices
  of ``blocks.{i}.attn.proj``) and MLP neurons (``blocks.{i}.mlp.fc1`` outputs); alpha 0.05.
- ``"gpt2"`` (setup C): the small GPT-2 trained on the induction task; test sequences are
  ``[A | A]`` (the second half repeats the first, 24 + 24 tokens), output =
  ``SequenceMargin(start=24)``: the mean next-token margin over the repeated half, with the
  token ids as target. Components = every attention head (input slices of
  ``transformer.h.{i}.attn.c_proj``) plus the MLP neurons (``mlp.c_fc`` outputs) of the last
  layer only (``gpt2_mlp_layers="all"`` takes every layer). alpha 0.025, the paper's GPT-2
  value. Every method runs on the token embeddings (``forward(e) =
  model(inputs_embeds=e).logits``; the embedding is not a component), so that conductance and
  internal influence have float inputs: their path runs from zero token embeddings (position
  embeddings kept) to the real ones.
- ``"llama"`` (setup D): a small Llama-style model (grouped-query attention: 4 query heads
  on 2 key/value heads; gated SiLU MLP) trained on left-padded associative recall
  (``k1 v1 ... kp vp q`` -> the value of ``q``). Components = every query head (input slices
  of ``o_proj``) + every MLP neuron (input features of ``down_proj``), the transformer
  default of ``ComponentSet.from_model``. Output = ``token_log_prob`` of the answer at the
  last real position (``llama_output="logit_difference"``: answer minus another value of the
  prompt, the usual patching metric); inputs are ``input_ids`` and ``attention_mask`` packed as one
  ``(n, 2, len)`` tensor (``PackedLanguageModelForward`` unpacks them and runs
  ``LanguageModelForward``), so every method sees one input tensor. Token-id inputs leave
  out the two path methods that interpolate inputs (conductance, internal influence).
  alpha 0.025.

For the language-model setups (C, D) the table adds ``AtP*`` (QK fix on the heads) and
``AtP* (QK fix, all)`` (QK fix on every component) next to attribution patching.

The first ``n_examples`` test examples are explained, with their true labels (tokens) as
targets. ``Setup.forward`` is a :class:`CountingForward`: it counts the example-rows every
method pushes through the model, split into rows run with and without autograd, so a
method's cost in forward-pass equivalents is ``rows_no_grad + 3 * rows_grad`` (a backward
counted as two forwards; every gradient method here runs one backward per forward).

``method_runners(setup, n_steps, max_rows, show_progress)`` gives the baselines as
``{name: f() -> attributions}`` in the paper's order; COAR is run by ``paper_table`` itself
(collection into a store, then fits). ``PAPER`` holds the headline correlations reported in
the COAR paper (Shah, Ilyas & Madry, 2024).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks.data import (  # noqa: E402
    load_fashion_mnist,
    make_induction_data,
    make_recall_data,
)
from benchmarks.train import recipe, train_or_load  # noqa: E402
from captum_coar import (
    ComponentAblation,
    ComponentAttributionPatching,
    ComponentIntegratedGradients,
    ComponentSet,
    SequenceMargin,
)
from captum_coar.baselines import (
    ComponentAtPStar,  # noqa: E402
    ComponentConductance,
    ComponentGradientXParameter,
    ComponentInternalInfluence,
)
from captum_coar.language_outputs import (  # noqa: E402
    LanguageModelForward,
    LogitDifference,
    TokenLogProb,
)

SETUP_NAMES = ("resnet", "vit", "gpt2", "llama")

#: Method names, in the paper's order, then ours; COAR first in our tables.
BASELINES = ("internal influence", "conductance", "gradient x parameter", "leave-one-out",
             "attribution patching", "integrated gradients (gates)", "AtP*",
             "AtP* (QK fix, all)")

#: The COAR paper's correlations at alpha_test = alpha_train, per model it reports.
PAPER: Dict[str, Dict[str, Any]] = {
    "CIFAR-10 ResNet": dict(alpha=0.10, values={
        "internal influence": 0.01, "conductance": 0.11, "gradient x parameter": 0.24,
        "leave-one-out": 0.52, "COAR": 0.75}),
    "ImageNet ResNet-50": dict(alpha=0.05, values={
        "internal influence": 0.00, "conductance": 0.00, "gradient x parameter": 0.17,
        "leave-one-out": 0.34, "COAR": 0.65}),
    "ImageNet ViT-B/16": dict(alpha=0.05, values={
        "internal influence": 0.02, "conductance": 0.07, "gradient x parameter": 0.54,
        "leave-one-out": 0.65, "COAR": 0.76}, extra="COAR at alpha_test 0.10: .58"),
}

#: Which paper rows each setup is compared with.
PAPER_REFERENCES = {"resnet": ("CIFAR-10 ResNet", "ImageNet ResNet-50"),
                    "vit": ("ImageNet ViT-B/16",), "gpt2": (), "llama": ()}


class CountingForward:
    """Wraps a forward function and counts the example-rows it sees, with and without grad."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.rows_no_grad = 0
        self.rows_grad = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0
        if torch.is_grad_enabled():
            self.rows_grad += rows
        else:
            self.rows_no_grad += rows
        return self.function(*args, **kwargs)

    def snapshot(self) -> Tuple[int, int]:
        return self.rows_no_grad, self.rows_grad

    def since(self, snapshot: Tuple[int, int]) -> Dict[str, int]:
        """Counts since ``snapshot``: forwards, forwards with grad, forward-pass equivalents."""
        no_grad, grad = self.rows_no_grad - snapshot[0], self.rows_grad - snapshot[1]
        return {"example_forwards": no_grad + grad, "example_forwards_with_grad": grad,
                "forward_equivalents": no_grad + 3 * grad}


class EmbeddingsForward(nn.Module):
    """``e -> model(inputs_embeds=e).logits`` for a Hugging Face causal LM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds: Tensor) -> Tensor:
        return self.model(inputs_embeds=embeds).logits


class PackedLanguageModelForward(nn.Module):
    """``x -> LanguageModelForward(model)(x[:, 0], x[:, 1])`` for ``(n, 2, len)`` packed
    ``input_ids`` and ``attention_mask``: one input tensor for every method of the table."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.lm = LanguageModelForward(model)

    def forward(self, packed: Tensor) -> Any:
        return self.lm(packed[:, 0], packed[:, 1])


@dataclass
class Setup:
    """One model with its components, examples, output and COAR settings."""

    name: str
    title: str
    model: nn.Module
    info: Dict[str, Any]
    components: ComponentSet
    forward: CountingForward
    inputs: Tensor
    target: Tensor
    output: Any
    alphas_train: Tuple[float, ...]
    notes: List[str] = field(default_factory=list)
    example_accuracy: Optional[float] = None

    @property
    def n_components(self) -> int:
        return self.components.n_components

    def test_alphas(self) -> Tuple[float, ...]:
        """Union of {alpha/2, alpha, 2 alpha} over the training fractions, sorted."""
        values = {round(f * a, 10) for a in self.alphas_train for f in (0.5, 1.0, 2.0)}
        return tuple(sorted(values))

    def describe(self) -> Dict[str, Any]:
        groups = [f"{g.module_name}:{g.n_units} {g.kind}s" for g in self.components.groups]
        keep = ("test_accuracy", "test_loss", "dataset", "dataset_is_fallback", "train_seconds",
                "steps", "n_test", "loaded_from_cache", "cache_path")
        return {"title": self.title, "n_components": self.n_components, "groups": groups,
                "n_examples": int(self.inputs.shape[0]), "alphas_train": list(self.alphas_train),
                "test_alphas": list(self.test_alphas()),
                "output": getattr(self.output, "describe", lambda: "margin")(),
                "example_accuracy": self.example_accuracy,
                "training": {k: self.info.get(k) for k in keep}, "notes": list(self.notes)}


def _image_setup(name: str, n_examples: int, quick: bool) -> Setup:
    model, info = train_or_load(name, quick=quick)
    data = load_fashion_mnist(n_train=1, n_test=n_examples)
    x, y = data.x_test[:n_examples], data.y_test[:n_examples]
    if name == "resnet":
        components = ComponentSet.from_model(model, kinds=("conv_filters",),
                                             exclude="*downsample*")
        title, alphas = "A: ResNetSmall (BatchNorm, residual) on " + data.name, (0.05, 0.10)
        notes = ["components: every conv filter except the two 1x1 shortcut (downsample) convs"]
    else:
        components = ComponentSet.from_model(model, kinds=("attention_heads", "linear_neurons"),
                                             include=["*attn.proj", "*mlp.fc1"])
        title, alphas = "B: ViTSmall on " + data.name, (0.05,)
        notes = ["components: attention heads (proj input slices) and MLP fc1 neurons"]
    if data.is_fallback:
        notes.append("Fashion-MNIST files absent: FELL BACK to scikit-learn digits (28x28)")
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return Setup(name, title, model, info, components, CountingForward(model), x, y, None,
                 alphas, notes, accuracy)


def _gpt2_setup(n_examples: int, quick: bool, mlp_layers: str) -> Setup:
    model, info = train_or_load("gpt2", quick=quick)
    config = model.config
    seq_len, half = 48, 24
    data = make_induction_data(n_examples, vocab_size=config.vocab_size, seq_len=seq_len,
                               seed=20_240_601, min_repeat=half, max_repeat=half)
    ids = data.input_ids
    layers = range(config.n_layer) if mlp_layers == "all" else [config.n_layer - 1]
    include = ["*attn.c_proj"] + [f"transformer.h.{i}.mlp.c_fc" for i in layers]
    components = ComponentSet.from_model(model, kinds=("attention_heads", "linear_neurons"),
                                         include=include)
    forward = EmbeddingsForward(model).eval()
    with torch.no_grad():
        embeds = model.transformer.wte(ids)
        logits = forward(embeds)
        accuracy = float((logits[:, half:-1].argmax(-1) == ids[:, half + 1:]).float().mean())
    which = "every layer" if mlp_layers == "all" else f"the last layer (h.{config.n_layer - 1})"
    notes = [
        f"test sequences [A | A], {half} + {half} tokens; output = mean next-token margin over"
        f" the repeated half (SequenceMargin(start={half})), target = the token ids",
        f"components: all {config.n_layer * config.n_head} heads + the MLP neurons of {which}"
        f" ({config.n_inner or 4 * config.n_embd} per layer)",
        "alpha_train 0.025 as in the paper's GPT-2 runs",
        "every method runs on the token embeddings (inputs_embeds); conductance and internal"
        " influence integrate from zero token embeddings (position embeddings kept)",
    ]
    return Setup("gpt2", f"C: GPT-2 ({config.n_layer} layers, {config.n_head} heads, n_embd"
                 f" {config.n_embd}) on induction", model, info, components,
                 CountingForward(forward), embeds, ids, SequenceMargin(start=half), (0.025,),
                 notes, accuracy)


LLAMA_OUTPUTS = ("token_log_prob", "logit_difference")


def _llama_setup(n_examples: int, quick: bool, output: str = "token_log_prob") -> Setup:
    model, info = train_or_load("llama", quick=quick)
    data = make_recall_data(n_examples, seed=20_240_601, **recipe("llama", quick)["data"])
    packed = torch.stack([data.input_ids, data.attention_mask], dim=1)
    components = ComponentSet.from_model(model)  # query heads + MLP neurons
    forward = PackedLanguageModelForward(model).eval()
    with torch.no_grad():
        accuracy = float((forward(packed).logits[:, -1].argmax(-1) == data.answer)
                         .float().mean())
    config = model.config
    if output == "logit_difference":
        target, output_fn = torch.stack([data.answer, data.distractor], dim=1), LogitDifference()
    else:
        target, output_fn = data.answer, TokenLogProb()
    notes = [
        f"associative recall, {config.num_hidden_layers} layers, {config.num_attention_heads}"
        f" query heads on {config.num_key_value_heads} key/value heads, gated MLP"
        f" ({config.intermediate_size} neurons per layer); left-padded prompts with"
        " attention_mask",
        f"output = {output} at the last real position"
        + (" (answer minus another value of the prompt)" if output == "logit_difference" else
           " (log-probability of the answer)"),
        f"components: {components.summary().splitlines()[0]}",
        "alpha_train 0.025; conductance and internal influence left out (token-id inputs)",
    ]
    return Setup("llama", f"D: Llama-style ({config.num_hidden_layers} layers, GQA"
                 f" {config.num_attention_heads}/{config.num_key_value_heads}, gated MLP) on"
                 " associative recall", model, info, components, CountingForward(forward),
                 packed, target, output_fn, (0.025,), notes, accuracy)


def build_setup(name: str, n_examples: int, quick: bool = False,
                gpt2_mlp_layers: str = "last", llama_output: str = "token_log_prob") -> Setup:
    """Load the model of ``name`` and declare its components, examples and output."""
    if name not in SETUP_NAMES:
        raise ValueError(f"unknown setup {name!r}; allowed: {', '.join(SETUP_NAMES)}")
    if gpt2_mlp_layers not in ("last", "all"):
        raise ValueError(f"gpt2_mlp_layers must be 'last' or 'all', got {gpt2_mlp_layers!r}")
    if name == "gpt2":
        return _gpt2_setup(n_examples, quick, gpt2_mlp_layers)
    if name == "llama":
        if llama_output not in LLAMA_OUTPUTS:
            raise ValueError(f"llama_output must be one of {LLAMA_OUTPUTS}, got {llama_output!r}")
        return _llama_setup(n_examples, quick, llama_output)
    return _image_setup(name, n_examples, quick)


def method_runners(setup: Setup, n_steps: int, max_rows: int,
                   show_progress: bool) -> Dict[str, Callable[[], Tensor]]:
    """The baselines of the table as zero-argument callables returning attributions."""
    f, c, x, t, out = setup.forward, setup.components, setup.inputs, setup.target, setup.output
    # gradient methods: bound the rows per pass the way the ablation engine does
    per_pass = max(x.shape[0], max_rows)
    common = dict(target=t, output=out)

    def path(cls: Any) -> Callable[[], Tensor]:
        return lambda: cls(f, c).attribute(x, n_steps=n_steps, internal_batch_size=per_pass,
                                           **common)

    runners = {
        "internal influence": path(ComponentInternalInfluence),
        "conductance": path(ComponentConductance),
        "gradient x parameter":
            lambda: ComponentGradientXParameter(f, c).attribute(x, internal_batch_size=per_pass,
                                                                **common),
        "leave-one-out":
            lambda: ComponentAblation(f, c).attribute(x, max_rows=max_rows,
                                                      show_progress=show_progress, **common),
        "attribution patching":
            lambda: ComponentAttributionPatching(f, c).attribute(
                x, internal_batch_size=per_pass, **common),
        "integrated gradients (gates)": path(ComponentIntegratedGradients),
    }
    if setup.name in ("gpt2", "llama"):
        runners["AtP*"] = lambda: ComponentAtPStar(f, c).attribute(
            x, qk_fix="heads", internal_batch_size=per_pass, qk_rows=max_rows, **common)
        runners["AtP* (QK fix, all)"] = lambda: ComponentAtPStar(f, c).attribute(
            x, qk_fix="all", internal_batch_size=per_pass, qk_rows=max_rows, **common)
    if setup.name == "llama":  # token-id inputs: no input path to interpolate
        for name in ("internal influence", "conductance"):
            runners.pop(name)
    return runners
