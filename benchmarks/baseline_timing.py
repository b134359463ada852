"""Time every component attribution method on a CNN trained on scikit-learn's digits.

Usage::

    python benchmarks/baseline_timing.py [--batch 32] [--repeats 3] [--threads 1] [--device cpu]
                                        [--json out.json]

What it does
------------
1. Trains a three-conv CNN (32 + 64 + 64 = 160 filters, BatchNorm after each conv) on the
   8x8 digits that ship with scikit-learn (no download), in well under a minute on a CPU.
2. Explains the correct-class margin of a batch of test examples, attributing to the 160
   conv filters with ``ablation="weights"``, and reports each method's run time (median of
   ``--repeats`` runs after one warm-up): leave-one-out, attribution patching, gradient x
   parameter, gate integrated gradients, conductance, internal influence, and COAR with its
   number of masks ``m``.
3. Compares :class:`ComponentConductance` over all three conv layers in one pass with
   Captum's ``LayerConductance`` called once per layer and summed per filter (same
   ``n_steps`` and method, logit of the target): the time ratio and the largest absolute
   difference of the results.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks._harness import command_line  # noqa: E402


class TimingCNN(nn.Module):
    """conv(1->32) -> conv(32->64) -> pool -> conv(64->64) -> mean -> fc(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x))).mean(dim=(2, 3))
        return self.fc(x)


def digits() -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:400], order[400:]
    return x[train], y[train], x[test], y[test]


def train(x: Tensor, y: Tensor, epochs: int = 6, seed: int = 0) -> TimingCNN:
    torch.manual_seed(seed)
    model = TimingCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            rows = order[start:start + 64]
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def timed(function: Callable[[], Any], repeats: int, device: torch.device) -> Tuple[float, Any]:
    """Median wall time over ``repeats`` runs after one warm-up, and the last result."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = function()
    times: List[float] = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = function()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = command_line(__doc__, device="cpu", threads=1,
                          threads_help="torch CPU threads (1 is steadiest on a shared machine)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--coar-masks", type=int, default=None,
                        help="COAR's m (default 10 x n_components)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()

    from captum.attr import LayerConductance

    from captum_coar.baselines import (
        ComponentAblation,
        ComponentAttributionPatching,
        ComponentConductance,
        ComponentGradientXParameter,
        ComponentIntegratedGradients,
        ComponentInternalInfluence,
    )
    from captum_coar.coar import ComponentAblationRegression
    from captum_coar.selectors import conv_filters

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x_train, y_train, x_test, y_test = digits()
    start = time.perf_counter()
    model = train(x_train, y_train)
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    model = model.to(device)
    x, target = x_test[:args.batch].to(device), y_test[:args.batch].to(device)
    components = conv_filters(model)
    n = components.n_components
    m = args.coar_masks or 10 * n
    steps = args.n_steps
    print(f"model: {components} | test accuracy {accuracy:.3f} | trained in {train_seconds:.1f} s")
    print(f"batch {args.batch} on {device}, torch threads {torch.get_num_threads()},"
          f" n_steps {steps}, output = correct-class margin, ablation = weights\n")

    methods: Dict[str, Tuple[str, Callable[[], Tensor]]] = {
        "leave-one-out (ComponentAblation)": (
            f"{n + 1} gated forwards x {args.batch}",
            lambda: ComponentAblation(model, components).attribute(x, target=target)),
        "attribution patching": (
            "1 forward + 1 backward",
            lambda: ComponentAttributionPatching(model, components).attribute(x, target=target)),
        "gradient x parameter": (
            "1 forward + 1 backward",
            lambda: ComponentGradientXParameter(model, components).attribute(x, target=target)),
        "gate integrated gradients": (
            f"{steps} path points, 1 pass",
            lambda: ComponentIntegratedGradients(model, components).attribute(
                x, target=target, n_steps=steps)),
        "conductance (all 3 layers)": (
            f"{steps + 1} path points, 1 pass",
            lambda: ComponentConductance(model, components).attribute(
                x, target=target, n_steps=steps)),
        "internal influence (all 3 layers)": (
            f"{steps} path points, 1 pass",
            lambda: ComponentInternalInfluence(model, components).attribute(
                x, target=target, n_steps=steps)),
        f"COAR (m = {m}, alpha = 0.05)": (
            f"{m} masks x {args.batch}, least squares",
            lambda: ComponentAblationRegression(model, components).attribute(
                x, target=target, n_masks=m, ablation_fraction=0.05)),
    }
    rows = []
    print("| method | work | time (s) |\n|---|---|---|")
    for name, (work, function) in methods.items():
        seconds, result = timed(function, args.repeats, device)
        assert tuple(result.shape) == (args.batch, n), name
        rows.append({"method": name, "work": work, "seconds": seconds})
        print(f"| {name} | {work} | {seconds:.3f} |")

    # ---------------------------------------------------------------- conductance vs Captum
    def ours() -> Tensor:
        return ComponentConductance(model, components).attribute(
            x, target=target, n_steps=steps, output="logit")

    def captum_per_layer() -> Tensor:
        columns = []
        for group in components.groups:
            layer = LayerConductance(model, components.module(group))
            attr = layer.attribute(x, target=target, n_steps=steps)
            columns.append(attr.detach().sum(dim=(2, 3)))
        return torch.cat(columns, dim=1)

    t_ours, a_ours = timed(ours, args.repeats, device)
    t_captum, a_captum = timed(captum_per_layer, args.repeats, device)
    difference = float((a_ours - a_captum).abs().max())
    scale = float(a_captum.abs().max())
    print(f"\nConductance over {len(components.groups)} conv layers ({n} filters), logit of the"
          f" target, n_steps {steps}:")
    print("| | time (s) |\n|---|---|")
    print(f"| ComponentConductance, one pass | {t_ours:.3f} |")
    print(f"| Captum LayerConductance, per layer | {t_captum:.3f} |")
    print(f"speed-up {t_captum / t_ours:.2f}x; max |difference| {difference:.2e}"
          f" (largest |attribution| {scale:.2e})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"n_components": n, "batch": args.batch, "device": str(device),
                       "accuracy": accuracy, "train_seconds": train_seconds, "methods": rows,
                       "conductance": {"ours_seconds": t_ours, "captum_seconds": t_captum,
                                       "speedup": t_captum / t_ours,
                                       "max_abs_difference": difference,
                                       "max_abs_attribution": scale}}, handle, indent=2)


if __name__ == "__main__":
    main()
