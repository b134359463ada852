"""Train the benchmark models once and cache their weights.

Contract
--------
``train_or_load(name, quick=False, retrain=False, cache_dir=CACHE_DIR, device="cpu",
threads=None, verbose=True) -> (model, info)``
    ``name`` is "resnet" (ResNetSmall on Fashion-MNIST), "vit" (ViTSmall on Fashion-MNIST)
    or "gpt2" (small GPT2LMHeadModel on the induction task of ``benchmarks.data``) or "llama"
    (small Llama-style model, grouped-query attention and gated MLP, on the left-padded
    associative-recall task of ``benchmarks.data``, loss on every answer of 6 queries). If
    ``cache_dir/<name>[-quick].pt`` exists and its ``.json`` sidecar records the same config,
    the state dict is loaded with ``torch.load(weights_only=True)``; otherwise the model is
    trained with Adam(W) on a fixed step budget (warmup + cosine schedule) and both files are
    written. The model comes back in eval mode on ``device``. ``info`` is the sidecar dict:
    ``test_accuracy`` (image models: top-1 on the test split; gpt2: next-token accuracy on
    the scored positions, i.e. the second copy of the repeated block), ``test_loss``,
    ``train_seconds``, ``steps``, ``dataset``, ``threads``, ``config``, plus ``cache_path``
    and ``loaded_from_cache``. ``quick=True`` uses tiny subsets and a few steps (seconds) for
    CI smoke runs and caches under a separate name. ``threads`` calls torch.set_num_threads.

``eval_classifier(model, x, y, batch_size)`` / ``eval_lm(model, data, batch_size)``
    -> (accuracy, mean loss).

CLI: ``python -m benchmarks.train [resnet vit gpt2 llama | all] [--quick] [--retrain]
[--threads N] [--cache-dir DIR]`` prints one summary line per model.

Measured (torch 2.13 CPU, 2 threads on 2 cores shared with other jobs, so times are loose):
resnet 0.9202 test accuracy in 142 s (3 epochs); vit 0.8839 in 1079 s (8 epochs, about
half of it waiting on other jobs); gpt2 0.9256 second-copy next-token accuracy in 939 s
(3000 steps; a one-token induction rule scores 0.79 on the same test set); llama 0.9910
final-query accuracy in 111 s (500 steps, 1 thread, stopped at >= 0.98). --quick: seconds.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks._harness import command_line  # noqa: E402
from benchmarks.data import (  # noqa: E402
    SequenceData,
    load_fashion_mnist,
    make_induction_data,
    make_recall_data,
)
from benchmarks.models import build_model  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parent / "cache"
MODEL_NAMES = ("resnet", "vit", "gpt2", "llama")

# Training recipes. "model" goes to build_model; the rest drive the loop.
RECIPES: Dict[str, Dict[str, Any]] = {
    "resnet": dict(model={}, epochs=3, batch_size=128, lr=2e-3, weight_decay=5e-4,
                   warmup_frac=0.05, seed=0),
    "vit": dict(model={"patch_size": 4, "dim": 64, "depth": 4, "num_heads": 4, "mlp_dim": 128},
                epochs=8, batch_size=128, lr=2e-3, weight_decay=5e-2, warmup_frac=0.05, seed=0),
    "gpt2": dict(model={"vocab_size": 64, "n_positions": 64, "n_embd": 128, "n_layer": 2,
                        "n_head": 4},
                 data={"vocab_size": 64, "seq_len": 48}, max_steps=3000, batch_size=64,
                 lr=1e-3, weight_decay=0.01, warmup_frac=0.03, seed=0, n_test=2000,
                 target_accuracy=0.99, eval_every=250),
    "llama": dict(model={"vocab_size": 33, "hidden_size": 64, "n_layer": 2, "n_head": 4,
                         "n_kv_head": 2, "intermediate_size": 128},
                  data={"n_keys": 16, "n_values": 16, "min_pairs": 4, "max_pairs": 6},
                  train_queries=6, max_steps=4000, batch_size=64, lr=3e-3, weight_decay=0.01,
                  warmup_frac=0.03, seed=0, n_test=1000, target_accuracy=0.98, eval_every=250),
}
QUICK = {
    "resnet": dict(n_train=512, n_test=256, epochs=1),
    "vit": dict(n_train=512, n_test=256, epochs=1),
    "gpt2": dict(max_steps=20, n_test=64, eval_every=10),
    "llama": dict(max_steps=20, n_test=64, eval_every=10),
}


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[train] {msg}", flush=True)


def _schedule(opt: torch.optim.Optimizer, total: int, warmup_frac: float):
    warm = max(1, int(warmup_frac * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _clipped_step(model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                  loss: torch.Tensor) -> None:
    """One optimiser and schedule step on ``loss`` with gradients clipped to norm 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with decay on matrices/filters only (not biases, norms, embeddings of size 1)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


@torch.no_grad()
def eval_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 1000) -> Tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` (put in eval mode) on (x, y)."""
    model.eval()
    dev = next(model.parameters()).device
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return correct / max(1, len(y)), loss / max(1, len(y))


@torch.no_grad()
def eval_lm(model: nn.Module, data: SequenceData, batch_size: int = 500) -> Tuple[float, float]:
    """Next-token accuracy and mean cross-entropy over the scored positions of ``data``."""
    model.eval()
    dev = next(model.parameters()).device
    correct, loss, count = 0, 0.0, 0
    for i in range(0, len(data.input_ids), batch_size):
        ids = data.input_ids[i:i + batch_size].to(dev)
        lab = data.labels[i:i + batch_size].to(dev)
        logits = model(input_ids=ids).logits[:, :-1]
        tgt = lab[:, 1:]
        keep = tgt != -100
        lg, tg = logits[keep], tgt[keep]
        loss += F.cross_entropy(lg, tg, reduction="sum").item()
        correct += (lg.argmax(-1) == tg).sum().item()
        count += int(keep.sum())
    return correct / max(1, count), loss / max(1, count)


def _lm_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def _train_image(name: str, rec: Dict[str, Any], device: str, verbose: bool):
    data = load_fashion_mnist(n_train=rec.get("n_train"), n_test=rec.get("n_test"))
    torch.manual_seed(rec["seed"])
    model = build_model(name, num_classes=data.num_classes, **rec["model"]).to(device)
    opt = _optimizer(model, rec["lr"], rec["weight_decay"])
    n, bs = len(data.y_train), rec["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total = rec["epochs"] * steps_per_epoch
    sched = _schedule(opt, total, rec["warmup_frac"])
    g = torch.Generator().manual_seed(rec["seed"])
    _log(verbose, f"{name}: {data.name} train {n} test {len(data.y_test)}, "
                  f"{rec['epochs']} epochs x {steps_per_epoch} steps, batch {bs}")
    t0, step, run_loss = time.time(), 0, 0.0
    for epoch in range(rec["epochs"]):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            run_loss += loss.item()
            if verbose and step % 100 == 0:
                _log(verbose, f"{name}: step {step}/{total} loss {run_loss / 100:.4f} "
                              f"({time.time() - t0:.0f}s)")
                run_loss = 0.0
        acc, tl = eval_classifier(model, data.x_test, data.y_test)
        _log(verbose, f"{name}: epoch {epoch + 1} test acc {acc:.4f} loss {tl:.4f} "
                      f"({time.time() - t0:.0f}s)")
    train_seconds = time.time() - t0
    acc, tl = eval_classifier(model, data.x_test, data.y_test)
    return model, dict(test_accuracy=acc, test_loss=tl, train_seconds=train_seconds,
                       steps=step, dataset=data.name, dataset_is_fallback=data.is_fallback,
                       n_train=n, n_test=len(data.y_test))


def _train_gpt2(rec: Dict[str, Any], device: str, verbose: bool):
    dcfg = rec["data"]
    test = make_induction_data(rec["n_test"], seed=10_000_019, **dcfg)
    model = build_model("gpt2", seed=rec["seed"], **rec["model"]).to(device)
    opt = _optimizer(model, rec["lr"], rec["weight_decay"])
    total, bs = rec["max_steps"], rec["batch_size"]
    sched = _schedule(opt, total, rec["warmup_frac"])
    _log(verbose, f"gpt2: induction task {dcfg}, up to {total} steps of batch {bs}, "
                  f"stop at test acc >= {rec['target_accuracy']}")
    t0, step, run_loss = time.time(), 0, 0.0
    acc = 0.0
    while step < total:
        model.train()
        batch = make_induction_data(bs, seed=rec["seed"] * 1_000_003 + step, **dcfg)
        loss = _lm_loss(model, batch.input_ids.to(device), batch.labels.to(device))
        _clipped_step(model, opt, sched, loss)
        step += 1
        run_loss += loss.item()
        if step % rec["eval_every"] == 0 or step == total:
            acc, tl = eval_lm(model, test)
            _log(verbose, f"gpt2: step {step}/{total} train loss "
                          f"{run_loss / rec['eval_every']:.4f} test acc {acc:.4f} "
                          f"loss {tl:.4f} ({time.time() - t0:.0f}s)")
            run_loss = 0.0
            if acc >= rec["target_accuracy"]:
                break
    train_seconds = time.time() - t0
    acc, tl = eval_lm(model, test)
    return model, dict(test_accuracy=acc, test_loss=tl, train_seconds=train_seconds,
                       steps=step, dataset="induction", dataset_is_fallback=False,
                       n_test=rec["n_test"])


def _recall_loss_and_accuracy(model: nn.Module, data: Any) -> Tuple[torch.Tensor, float]:
    """Cross-entropy over every answer (earlier answered queries and the final one)."""
    from captum_coar.language_outputs import LanguageModelForward

    logits = LanguageModelForward(model)(data.input_ids, data.attention_mask).logits
    final = logits[:, -1]  # left padding: the last position is the final query for every row
    scored = [final]
    targets = [data.answer]
    if data.labels is not None:
        keep = data.labels[:, 1:] != -100
        scored.append(logits[:, :-1][keep])
        targets.append(data.labels[:, 1:][keep])
    loss = F.cross_entropy(torch.cat(scored), torch.cat(targets))
    return loss, float((final.argmax(-1) == data.answer).float().mean())


def _train_llama(rec: Dict[str, Any], device: str, verbose: bool):
    dcfg = rec["data"]
    test = make_recall_data(rec["n_test"], seed=10_000_019, **dcfg)
    model = build_model("llama", seed=rec["seed"], **rec["model"]).to(device)
    opt = _optimizer(model, rec["lr"], rec["weight_decay"])
    total, bs = rec["max_steps"], rec["batch_size"]
    sched = _schedule(opt, total, rec["warmup_frac"])
    _log(verbose, f"llama: associative recall {dcfg}, up to {total} steps of batch {bs}")
    t0, step, run_loss, acc = time.time(), 0, 0.0, 0.0
    while step < total:
        model.train()
        batch = make_recall_data(bs, seed=rec["seed"] * 1_000_003 + step,
                                 n_queries=rec["train_queries"], **dcfg)
        loss, _ = _recall_loss_and_accuracy(model, batch)
        _clipped_step(model, opt, sched, loss)
        step += 1
        run_loss += loss.item()
        if step % rec["eval_every"] == 0 or step == total:
            model.eval()
            with torch.no_grad():
                tl, acc = _recall_loss_and_accuracy(model, test)
            _log(verbose, f"llama: step {step}/{total} train loss"
                          f" {run_loss / rec['eval_every']:.4f} test acc {acc:.4f}"
                          f" ({time.time() - t0:.0f}s)")
            run_loss = 0.0
            if acc >= rec["target_accuracy"]:
                break
    model.eval()
    with torch.no_grad():
        tl, acc = _recall_loss_and_accuracy(model, test)
    return model, dict(test_accuracy=acc, test_loss=float(tl), train_seconds=time.time() - t0,
                       steps=step, dataset="associative recall", dataset_is_fallback=False,
                       n_test=rec["n_test"])


def recipe(name: str, quick: bool = False) -> Dict[str, Any]:
    """The training recipe (a fresh dict) used by ``train_or_load``."""
    if name not in RECIPES:
        raise ValueError(f"unknown model name {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    rec = json.loads(json.dumps(RECIPES[name]))
    if quick:
        rec.update(QUICK[name])
    return rec


def build_for(name: str, quick: bool = False) -> nn.Module:
    """An untrained model with the architecture ``train_or_load(name, quick)`` uses."""
    rec = recipe(name, quick)
    if name in ("gpt2", "llama"):
        return build_model(name, seed=rec["seed"], **rec["model"])
    return build_model(name, num_classes=10, **rec["model"])


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (results stay portable)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def train_or_load(
    name: str,
    quick: bool = False,
    retrain: bool = False,
    cache_dir: Optional[os.PathLike] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    verbose: bool = True,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load the cached model ``name`` or train and cache it; see the module docstring."""
    rec = recipe(name, quick)
    if threads is not None:
        torch.set_num_threads(threads)
    cache = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    stem = cache / (name + ("-quick" if quick else ""))
    pt, side = stem.with_suffix(".pt"), stem.with_suffix(".json")
    if not retrain and pt.is_file() and side.is_file():
        info = json.loads(side.read_text())
        if info.get("config") == rec:
            model = build_for(name, quick)
            model.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
            model.to(device).eval()
            info.update(cache_path=_shown_path(pt), loaded_from_cache=True)
            _log(verbose, f"{name}: loaded {pt} (test acc {info['test_accuracy']:.4f}, "
                          f"trained in {info['train_seconds']:.0f}s)")
            return model, info
        _log(verbose, f"{name}: cached config differs from the recipe; retraining")
    if name == "gpt2":
        model, info = _train_gpt2(rec, device, verbose)
    elif name == "llama":
        model, info = _train_llama(rec, device, verbose)
    else:
        model, info = _train_image(name, rec, device, verbose)
    model.eval()
    info.update(name=name, quick=quick, threads=torch.get_num_threads(), config=rec,
                torch_version=torch.__version__)
    cache.mkdir(parents=True, exist_ok=True)
    # Written under temporary names and renamed, the description last: an interrupted save
    # never leaves weights that a description vouches for but that were not fully written.
    side.unlink(missing_ok=True)
    tmp_pt, tmp_side = pt.with_suffix(".pt.tmp"), side.with_suffix(".json.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp_pt)
    tmp_side.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_pt, pt)
    os.replace(tmp_side, side)
    _log(verbose, f"{name}: test acc {info['test_accuracy']:.4f} in "
                  f"{info['train_seconds']:.0f}s; saved {pt}")
    info.update(cache_path=_shown_path(pt), loaded_from_cache=False)
    return model, info


def main(argv: Optional[list] = None) -> int:
    p = command_line(__doc__, quick="tiny subsets, a few steps (CI)", device="cpu",
                     threads=int(os.environ.get("COAR_BENCH_THREADS", min(4, os.cpu_count() or 1))))
    p.add_argument("models", nargs="*", default=["all"],
                   help="resnet, vit, gpt2, llama or all (default)")
    p.add_argument("--retrain", action="store_true", help="ignore the cache")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    names = list(MODEL_NAMES) if "all" in args.models else args.models
    for n in names:
        if n not in MODEL_NAMES:
            p.error(f"unknown model {n!r}; allowed: {', '.join(MODEL_NAMES)}, all")
    rows = []
    for n in names:
        _, info = train_or_load(n, quick=args.quick, retrain=args.retrain,
                                cache_dir=args.cache_dir, device=args.device,
                                threads=args.threads)
        rows.append(info)
    for info in rows:
        print(f"{info['name']:7s} {info['dataset']:15s} test_acc={info['test_accuracy']:.4f} "
              f"train_s={info['train_seconds']:.1f} steps={info['steps']} "
              f"threads={info['threads']} cached={info['loaded_from_cache']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
