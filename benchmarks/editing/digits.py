"""The planted-backdoor suite's data and models: scikit-learn digits, two triggers, two nets.

Contract
--------
``suite_data(trigger, seed) -> SuiteData``: the 1,797 8x8 digits of scikit-learn (scaled to
[0, 1], no download) split by a permutation seeded with ``seed`` into 1,200 training images
and the rest; 10% of the training images get ``trigger`` and the label 0 (the backdoor). The
held-out images whose true class is not 0 (a trigger changes nothing for a 0) are split in
order into ``attr`` (40: attributions and gate training), ``val`` (choice of k and of the
method) and ``test`` (reported). Triggers (``apply_trigger(name, x)``):

- ``"patch"``: a 3x3 checkerboard (0/1) in the bottom-right corner;
- ``"blend"``: ``0.8 x + 0.2 P`` for a fixed uniform random 8x8 pattern ``P`` (seed 123),
  spread over the whole image (Chen et al. 2017's blended injection).

Architectures (written here, conv layers bias-free and followed by BatchNorm):

- ``"cnn"``: :class:`PlainCNN`, conv 16 -> conv 32 -> 2x2 max-pool -> conv 32 -> global mean
  -> fc 64 -> fc 10 (80 conv filters);
- ``"resnet"``: :class:`DigitsResNet`, stem conv 16, a basic block at 16, a basic block at 32
  with stride 2 and a 1x1 downsample, global mean, fc 10 (112 conv filters besides the
  downsample).

``trained(arch, trigger, seed, cache_dir)`` trains with Adam (lr 3e-3, one-cycle, 25 epochs,
batch 64, random shifts of up to one pixel with zero fill, so the corner trigger stays in its
corner) or loads ``cache_dir/editing-suite-<arch>-<trigger>-s<seed>.pt`` when its sidecar
records the same config; returns the model in eval mode and an info dict.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

CACHE_DIR = Path(__file__).resolve().parent.parent / "cache"
ARCHS = ("cnn", "resnet")
TRIGGERS = ("patch", "blend")
N_TRAIN, N_ATTR, N_VAL = 1200, 40, 160


@dataclass
class SuiteData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    poisoned: int
    x_attr: torch.Tensor
    y_attr: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_fit: torch.Tensor  # clean training images (mean ablation's reference)


def apply_trigger(name: str, x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    if name == "patch":
        checker = ((torch.arange(3)[:, None] + torch.arange(3)[None, :]) % 2).to(x)
        out[..., -3:, -3:] = checker
        return out
    if name == "blend":
        pattern = torch.rand(8, 8, generator=torch.Generator().manual_seed(123)).to(x)
        return 0.8 * out + 0.2 * pattern
    raise ValueError(f"`trigger` must be one of {TRIGGERS}; got {name!r}")


def suite_data(trigger: str, seed: int) -> SuiteData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, rest = order[:N_TRAIN], order[N_TRAIN:]
    x_train, y_train = x[train].clone(), y[train].clone()
    poison = torch.rand(N_TRAIN, generator=torch.Generator().manual_seed(1000 + seed)) < 0.10
    x_fit = x_train[~poison][:300].clone()
    x_train[poison] = apply_trigger(trigger, x_train[poison])
    y_train[poison] = 0
    rest = rest[y[rest] != 0]
    a, v = rest[:N_ATTR], rest[N_ATTR:N_ATTR + N_VAL]
    t = rest[N_ATTR + N_VAL:]
    return SuiteData(x_train, y_train, int(poison.sum()), x[a], y[a], x[v], y[v], x[t], y[t],
                     x_fit)


class PlainCNN(nn.Module):
    """conv1 (16) -> conv2 (32) -> max-pool -> conv3 (32) -> mean -> fc1 (64) -> fc2."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x))).mean(dim=(2, 3))
        return self.fc2(F.relu(self.fc1(x)))


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the (1x1 downsampled) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class DigitsResNet(nn.Module):
    """stem conv (16) -> block (16) -> block (32, stride 2) -> mean -> fc."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = Block(16, 16, 1)
        self.layer2 = Block(16, 32, 2)
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean(dim=(2, 3)))


def build(arch: str) -> nn.Module:
    if arch == "cnn":
        return PlainCNN()
    if arch == "resnet":
        return DigitsResNet()
    raise ValueError(f"`arch` must be one of {ARCHS}; got {arch!r}")


def _shifted(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy:9 + dy, 1 + dx:9 + dx]


def trained(arch: str, trigger: str, seed: int, data: SuiteData,
            cache_dir: Path = CACHE_DIR) -> Tuple[nn.Module, Dict[str, Any]]:
    config = {"arch": arch, "trigger": trigger, "seed": seed, "epochs": 25, "lr": 3e-3,
              "batch_size": 64, "n_train": N_TRAIN, "poison": 0.10, "version": 1}
    path = Path(cache_dir) / f"editing-suite-{arch}-{trigger}-s{seed}.pt"
    sidecar = path.with_suffix(".json")
    torch.manual_seed(seed)
    model = build(arch)
    if path.exists() and sidecar.exists() and json.loads(sidecar.read_text())["config"] == config:
        model.load_state_dict(torch.load(path, weights_only=True))
        info = json.loads(sidecar.read_text())
        info["loaded_from_cache"] = True
        return model.eval(), info
    start = time.time()
    steps = config["epochs"] * -(-N_TRAIN // config["batch_size"])
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config["lr"], total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(config["epochs"]):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, config["batch_size"]):
            rows = perm[i:i + config["batch_size"]]
            loss = F.cross_entropy(model(_shifted(data.x_train[rows], g)), data.y_train[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    info = {"config": config, "train_seconds": time.time() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    sidecar.write_text(json.dumps(info, indent=1))
    info["loaded_from_cache"] = False
    return model, info
