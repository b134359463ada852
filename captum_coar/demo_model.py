"""The demo's model and data: a small CNN trained on scikit-learn's digits, on the CPU.

Contract
--------
:func:`load_digits_split` returns the 8x8 digit images that ship with scikit-learn (no
download) as float tensors ``(n, 1, 8, 8)`` scaled to ``[0, 1]`` with integer labels, split
into train and test parts by a seeded permutation. scikit-learn is only in the ``test``
extra, so it is imported here, lazily, with a clear error when it is missing.
:class:`DigitsCNN` is a three-conv, two-linear network with BatchNorm (``conv1..3``,
``fc1``, ``fc2``) and :func:`train_digits_cnn` trains it deterministically for a seed
(a few seconds on two CPU cores) and returns it in eval mode.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = ["DigitsCNN", "load_digits_split", "train_digits_cnn", "accuracy"]


def load_digits_split(test_fraction: float = 0.25, seed: int = 0
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` from ``sklearn.datasets.load_digits``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the captum_coar demo needs scikit-learn for its data set (the 8x8 digits that ship"
            " with it, no download); install it with `pip install scikit-learn` or"
            " `pip install captum_coar[test]`"
        ) from error
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * x.shape[0]))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


class DigitsCNN(nn.Module):
    """conv1 -> conv2 -> pool -> conv3 -> global mean -> fc1 -> fc2 (10 classes).

    Convolutions have no bias (a BatchNorm follows each), so zeroing a filter's weights
    leaves the BatchNorm's constant shift, as in the COAR paper's ResNets.
    """

    def __init__(self, width: int = 16, hidden: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x))).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def train_digits_cnn(
    x: Tensor,
    y: Tensor,
    epochs: int = 15,
    seed: int = 0,
    width: int = 16,
    hidden: int = 64,
    lr: float = 3e-3,
    batch_size: int = 64,
) -> DigitsCNN:
    """Train a :class:`DigitsCNN` with Adam (deterministic for a seed); returns it in eval mode."""
    torch.manual_seed(seed)
    model = DigitsCNN(width=width, hidden=hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=epochs * ((x.shape[0] + batch_size - 1) // batch_size))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            rows = order[start:start + batch_size]
            # Small random shifts make the model less brittle; digits are centred otherwise.
            batch = torch.roll(x[rows], shifts=tuple(torch.randint(-1, 2, (2,), generator=generator).tolist()),
                               dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    return float((model(x).argmax(dim=1) == y).float().mean())
