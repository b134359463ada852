"""The reference COAR data-collection loop, written plainly: the baseline to beat.

This mirrors the reference implementation of Shah, Ilyas & Madry (2024): for every
ablation mask, deep-copy the model, zero the weights of the ablated components (biases
kept), move the copy to the device and run the whole evaluation set through it in batches,
recording the model output for every example. One mask at a time, no hooks, no sharing.

Contract
--------
``reference_ablation_outputs(model, module_names, masks, inputs, labels, batch_size=256,
device="cpu", output_fn=None, show_progress=False) -> Tensor (k, n)``
    ``module_names``: names (as in ``model.named_modules()``) of ``nn.Conv2d``, ``nn.Linear``
    or Hugging Face ``Conv1D`` modules. Their components, in mask-column order, are: module
    by module in the given order, then by output unit: Conv2d filter c (``weight[c] = 0``),
    Linear row j (``weight[j, :] = 0``), Conv1D output column j (``weight[:, j] = 0``; its
    weight is stored (in, out)). Biases stay, so an ablated unit outputs its bias.
    ``masks``: (k, N) bool keep-masks, True = kept, N = total number of components
    (``component_counts``). ``inputs``: a tensor whose first axis is the n examples (images,
    or token ids for a language model); ``labels``: (n,) class labels, or (n, L) token
    labels with -100 for unscored positions. Output row r, column i = ``output_fn(logits,
    labels)`` for example i under mask r, computed with the copy in eval mode under
    ``torch.no_grad()``. The default output is the correct-class margin (true logit minus
    the largest other logit) for (b, C) logits and the mean next-token margin over the
    scored positions for (b, L, V) logits. ``model`` itself is never modified. The result is
    float32 on the CPU.

``correct_class_margin(logits, labels)`` (b, C), (b,) -> (b,)
``sequence_margin(logits, labels)`` (b, L, V), (b, L) -> (b,)  (logits at t score label t+1)
``component_counts(model, module_names)`` -> list of unit counts per module.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

OutputFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _is_hf_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # transformers not installed
        return False
    return isinstance(module, Conv1D)


def _num_units(module: nn.Module, name: str) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if _is_hf_conv1d(module):
        return module.weight.shape[1]
    raise TypeError(
        f"module {name!r} is {type(module).__name__}; allowed: nn.Conv2d, nn.Linear, "
        "transformers Conv1D"
    )


def _zero_units(module: nn.Module, units: torch.Tensor) -> None:
    """Zero the weights of output units ``units`` (a 1-D index tensor) in place."""
    if _is_hf_conv1d(module):
        module.weight[:, units] = 0
    else:  # Conv2d: weight (out, in, kh, kw); Linear: weight (out, in)
        module.weight[units] = 0


def component_counts(model: nn.Module, module_names: Sequence[str]) -> List[int]:
    """Number of components (output units) of each named module, in the given order."""
    mods = dict(model.named_modules())
    missing = [n for n in module_names if n not in mods]
    if missing:
        raise KeyError(f"modules {missing} not found in the model")
    return [_num_units(mods[n], n) for n in module_names]


def correct_class_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the largest other logit, per row."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return true - other


def sequence_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token margin over scored positions (labels != -100, HF causal shift)."""
    lg = logits[:, :-1]
    tgt = labels[:, 1:]
    scored = tgt != -100
    safe = tgt.clamp(min=0)
    true = lg.gather(2, safe.unsqueeze(2)).squeeze(2)
    other = lg.scatter(2, safe.unsqueeze(2), float("-inf")).amax(dim=2)
    m = (true - other) * scored
    return m.sum(1) / scored.sum(1).clamp(min=1)


def _default_output(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 2:
        return correct_class_margin(logits, labels)
    if logits.ndim == 3:
        return sequence_margin(logits, labels)
    raise ValueError(f"cannot take a margin of logits with shape {tuple(logits.shape)}")


def _logits(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def reference_ablation_outputs(
    model: nn.Module,
    module_names: Sequence[str],
    masks: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    device: str = "cpu",
    output_fn: Optional[OutputFn] = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Outputs (k, n) of the model under each keep-mask; see the module docstring."""
    counts = component_counts(model, module_names)
    total = sum(counts)
    masks = torch.as_tensor(masks)
    if masks.dtype != torch.bool or masks.ndim != 2 or masks.shape[1] != total:
        raise ValueError(
            f"masks must be a bool tensor of shape (k, {total}) for modules "
            f"{list(module_names)} with {counts} units; got {masks.dtype} {tuple(masks.shape)}"
        )
    if len(inputs) != len(labels):
        raise ValueError(f"inputs has {len(inputs)} examples but labels has {len(labels)}")
    output_fn = output_fn or _default_output
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    k, n = masks.shape[0], len(inputs)
    result = torch.empty(k, n, dtype=torch.float32)
    t0 = time.time()
    for r in range(k):
        ablated = copy.deepcopy(model)
        mods = dict(ablated.named_modules())
        for name, lo, hi in zip(module_names, offsets[:-1], offsets[1:]):
            drop = (~masks[r, lo:hi]).nonzero().flatten()
            if drop.numel():
                _zero_units(mods[name], drop)
        ablated.to(device).eval()
        for i in range(0, n, batch_size):
            xb = inputs[i:i + batch_size].to(device)
            yb = labels[i:i + batch_size].to(device)
            logits = _logits(ablated(xb))
            result[r, i:i + batch_size] = output_fn(logits, yb).float().cpu()
        del ablated
        if show_progress and ((r + 1) % max(1, k // 10) == 0 or r + 1 == k):
            el = time.time() - t0
            print(f"[reference] mask {r + 1}/{k} ({el:.1f}s, {el / (r + 1):.3f}s/mask)",
                  flush=True)
    return result
