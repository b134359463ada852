"""Shared by the COAR, store and evaluation tests: a tiny CNN trained on scikit-learn's
digits (cached) and a forward function that counts its calls (and can simulate a crash)."""

from __future__ import annotations

import functools

import torch
from torch import nn


class TinyDigitsCNN(nn.Module):
    """Two conv layers (with bias) and a linear head, for 8x8 digits: smaller and faster to
    train than the demo's :class:`captum_coar.demo_model.DigitsCNN` (three convs with
    BatchNorm), which it is not."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)  # 4 x 4
        x = torch.nn.functional.adaptive_avg_pool2d(x, (2, 2))
        return self.fc(x.flatten(1))


@functools.lru_cache(maxsize=1)
def digits_cnn(epochs: int = 8):
    """(model in eval mode, test images (n, 1, 8, 8), test labels): a few seconds on a CPU."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = TinyDigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        perm = train[torch.randperm(len(train), generator=g)]
        for start in range(0, len(perm), 64):
            idx = perm[start:start + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x[test], y[test]


class CountingForward:
    """Forward function that counts calls and example rows and, with ``fail_after``, crashes
    after that many calls."""

    def __init__(self, model, fail_after=None):
        self.model, self.fail_after, self.calls, self.rows = model, fail_after, 0, 0

    def __call__(self, *args):
        self.calls += 1
        self.rows += int(args[0].shape[0])  # example rows given, over all calls
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        return self.model(*args)


def additive_neurons(n: int = 5, n_hidden: int = 12):
    """(model, its ``hidden`` neurons as components, inputs (n, 6), targets): the exactly
    additive toy model of ``toy_models`` in float64."""
    from captum_coar.selectors import linear_neurons
    from captum_coar.testing import AdditiveNet

    torch.manual_seed(0)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=n_hidden, n_classes=3, seed=0).double().eval()
    x = torch.randn(n, 6, dtype=torch.float64)
    y = torch.arange(n) % 3
    return model, linear_neurons(model, ["hidden"]), x, y
