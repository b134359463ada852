"""Data and models of the five COAR-Edit benchmark tasks, built offline and cached.

Contract
--------
``task_data(name, base, quick) -> TaskData`` builds a task's train / validation / test
images from ``base`` (an ``ImageData`` of ``benchmarks.data.load_fashion_mnist``):

- ``"plain"``: the 10-class data as is (tasks 1 errors and 2 forgetting share it).
- ``"spurious"``: T-shirt (label 0) against Shirt (label 1); the background (pixels below
  0.1 intensity) carries horizontal stripes (bg 0) or vertical stripes (bg 1). In train and
  validation bg = label for 95% of images, in the test split too; the minority groups are
  (label 0, bg 1) and (label 1, bg 0). ``group = 2 * label + bg``.
- ``"backdoor"``: a 4x4 checkerboard at the bottom-right corner; 5% of training images carry
  it and are relabelled to class 0. ``triggered(x)`` adds it to any images.
- ``"typographic"``: 40x40 canvases, the image at the top (centred), a 12-pixel strip below
  that carries a short class name rendered by Pillow (DejaVu Sans). 80% of training images
  carry their true class name, 20% no text. ``with_text(x, names)`` writes given class
  indices' names (used for the attack: a wrong name).

``trained_model(name, data, quick, cache_dir, widths=WIDTHS)`` trains a ``ResNetSmall``
(default widths 16/32/64, one block per stage) with AdamW and a cosine schedule on ``data.x_train``, or loads it from
``cache_dir/editing-<name>-w<widths>[-quick].pt`` when its JSON sidecar records the same config.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.models import ResNetSmall
from benchmarks.train import eval_classifier

CACHE_DIR = Path(__file__).resolve().parent.parent / "cache"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SHORT_NAMES = ("tee", "pants", "pull", "dress", "coat", "sandal", "shirt", "sneak", "bag", "boot")
HIGH = 2.0  # pixel value of stripes, trigger and text (data are standardised, background ~ -0.8)
WIDTHS = (16, 32, 64)


@dataclass
class TaskData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    extra: Dict[str, Any] = field(default_factory=dict)


def _split(base, n_train: int, n_val: int, n_test: int):
    x, y = base.x_train[: n_train + n_val], base.y_train[: n_train + n_val]
    return (x[:n_train], y[:n_train], x[n_train:], y[n_train:], base.x_test[:n_test],
            base.y_test[:n_test])


def _stripes(x: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Stripes in the background: horizontal (bg 0) or vertical (bg 1)."""
    size = x.shape[-1]
    rows = (torch.arange(size) % 4 < 2).float()
    horizontal = rows[:, None].expand(size, size)
    pattern = torch.where(bg[:, None, None, None].bool(), horizontal.T, horizontal)
    background = x < (0.1 - 0.2860) / 0.3530
    return torch.where(background & (pattern > 0), torch.full_like(x, HIGH * 0.5), x)


def _spurious(base, sizes, seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)

    def build(x, y):
        keep = (y == 0) | (y == 6)
        x, label = x[keep], (y[keep] == 6).long()
        agree = torch.rand(len(label), generator=g) < 0.95
        bg = torch.where(agree, label, 1 - label)
        return _stripes(x, bg), label, 2 * label + bg

    x_tr, y_tr, x_va, y_va, x_te, y_te = _split(base, *sizes)
    (xt, yt, gt), (xv, yv, gv), (xe, ye, ge) = build(x_tr, y_tr), build(x_va, y_va), build(x_te, y_te)
    return TaskData(xt, yt, xv, yv, xe, ye, 2, {"group_val": gv, "group_test": ge,
                                                "group_train": gt})


def triggered(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    out[..., -5:-1, -5:-1] = torch.where(checker.bool(), HIGH, -HIGH).to(x)
    return out


def _backdoor(base, sizes, seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr, x_va, y_va, x_te, y_te = _split(base, *sizes)
    poison = torch.rand(len(y_tr), generator=g) < 0.05
    x_tr, y_tr = x_tr.clone(), y_tr.clone()
    x_tr[poison] = triggered(x_tr[poison])
    y_tr[poison] = 0
    return TaskData(x_tr, y_tr, x_va, y_va, x_te, y_te, 10, {"poisoned": int(poison.sum())})


_TEXT_CACHE: Dict[int, torch.Tensor] = {}


def _text_strip(label: int) -> torch.Tensor:
    if label not in _TEXT_CACHE:
        from PIL import Image, ImageDraw, ImageFont

        image = Image.new("L", (40, 12), 0)
        font = ImageFont.truetype(FONT, 10)
        ImageDraw.Draw(image).text((1, 0), SHORT_NAMES[label], fill=255, font=font)
        _TEXT_CACHE[label] = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return _TEXT_CACHE[label]


def canvas(x: torch.Tensor) -> torch.Tensor:
    """28x28 images on a 40x40 canvas (background value), image at the top, centred."""
    out = torch.full((x.shape[0], 1, 40, 40), (0 - 0.2860) / 0.3530)
    out[:, :, :28, 6:34] = x
    return out


def with_text(x40: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
    """Write class ``names[i]``'s short name into the bottom strip of canvas ``i``."""
    out = x40.clone()
    for label in names.unique().tolist():
        rows = names == label
        strip = _text_strip(int(label))
        out[rows, 0, 28:40, :] = torch.where(strip > 0.5, HIGH, out[rows, 0, 28:40, :])
    return out


def _typographic(base, sizes, seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr, x_va, y_va, x_te, y_te = _split(base, *sizes)
    x_tr = canvas(x_tr)
    texted = torch.rand(len(y_tr), generator=g) < 0.8
    x_tr[texted] = with_text(x_tr[texted], y_tr[texted])
    return TaskData(x_tr, y_tr, canvas(x_va), y_va, canvas(x_te), y_te, 10,
                    {"texted_share": float(texted.float().mean())})


SIZES = {False: (12000, 3000, 3000), True: (1500, 400, 400)}  # train, val, test (pre-filter)
SPURIOUS_SIZES = {False: (24000, 10000, 10000), True: (3000, 2000, 2000)}


def task_data(name: str, base, quick: bool = False) -> TaskData:
    if name == "plain":
        return TaskData(*_split(base, *SIZES[quick]), 10)
    if name == "spurious":
        return _spurious(base, SPURIOUS_SIZES[quick])
    if name == "backdoor":
        return _backdoor(base, SIZES[quick])
    if name == "typographic":
        return _typographic(base, SIZES[quick])
    raise ValueError(f"`name` must be one of plain, spurious, backdoor, typographic; got {name!r}")


def build_model(num_classes: int, widths=WIDTHS) -> ResNetSmall:
    torch.manual_seed(0)
    return ResNetSmall(num_classes=num_classes, widths=tuple(widths), blocks_per_stage=1)


def trained_model(name: str, data: TaskData, quick: bool = False,
                  cache_dir: Path = CACHE_DIR, epochs: Optional[int] = None,
                  verbose: bool = True, widths=WIDTHS):
    """(model in eval mode, info) for task ``name``; trained once, then loaded from the cache."""
    epochs = epochs or (1 if quick else 3)
    config = {"task": name, "widths": list(widths), "epochs": epochs, "n_train": len(data.y_train),
              "num_classes": data.num_classes, "lr": 3e-3, "batch_size": 128, "version": 1}
    tag = "-".join(str(w) for w in widths)
    path = Path(cache_dir) / f"editing-{name}-w{tag}{'-quick' if quick else ''}.pt"
    sidecar = path.with_suffix(".json")
    model = build_model(data.num_classes, widths)
    if path.exists() and sidecar.exists() and json.loads(sidecar.read_text()).get("config") == config:
        model.load_state_dict(torch.load(path, weights_only=True))
        info = json.loads(sidecar.read_text())
        info["loaded_from_cache"] = True
        return model.eval(), info
    start = time.time()
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=5e-4)
    steps = epochs * math.ceil(len(data.y_train) / config["batch_size"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(data.y_train), generator=g)
        for i in range(0, len(perm), config["batch_size"]):
            rows = perm[i:i + config["batch_size"]]
            loss = F.cross_entropy(model(data.x_train[rows]), data.y_train[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    accuracy, _ = eval_classifier(model, data.x_test, data.y_test)
    info = {"config": config, "test_accuracy": accuracy, "train_seconds": time.time() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    sidecar.write_text(json.dumps(info, indent=1))
    if verbose:
        print(f"[editing] trained {name}: test accuracy {accuracy:.4f} in"
              f" {info['train_seconds']:.0f} s", flush=True)
    info["loaded_from_cache"] = False
    return model, info
