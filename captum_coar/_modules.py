"""Facts about a model's modules, read without changing anything: a leaf of the import graph.

Contract
--------
Small, pure helpers that many layers need and that belong to none of them; this module imports
only torch and the standard library, so any module of the package may import it without
forming a circle.

- :func:`is_hf_conv1d`: Hugging Face's ``Conv1D`` (a linear map whose weight is stored
  ``[in, out]``), told by its type name and its ``nf`` / ``nx`` attributes (transformers is not
  imported).
- :func:`model_device`: the device of the first parameter, else of the first buffer, else CPU.
- :func:`result_dtype`: the one dtype rule for returned attributions: float64 for a model whose
  first floating parameter is float64, float32 otherwise.
- :func:`require_module`: ``modules[name]``, or a ``ValueError`` naming up to three close names.
- :func:`name_filter`: a predicate on module names from ``include`` / ``exclude`` glob patterns
  (``fnmatch``, case-sensitive), lists of them or predicates; the empty name (the root module)
  never passes.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import nn

__all__ = ["NamePatterns", "is_hf_conv1d", "model_device", "result_dtype", "require_module",
           "name_filter"]

NamePatterns = Union[None, str, Sequence[str], Callable[[str], bool]]


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's ``Conv1D`` (a linear map whose weight is stored ``[in, out]``)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def result_dtype(model: nn.Module) -> torch.dtype:
    """Attributions' dtype: float64 for a model whose first floating parameter is float64,
    else float32 (the one dtype rule, used wherever results are returned)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32


def require_module(modules: Mapping[str, nn.Module], name: str) -> nn.Module:
    """``modules[name]``, or a ValueError naming the closest module names."""
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"no module named {name!r} in the model{hint}")


def name_filter(include: NamePatterns, exclude: NamePatterns) -> Callable[[str], bool]:
    """A predicate that passes a non-empty module name matched by ``include`` (everything when
    None) and not by ``exclude`` (nothing when None); each is a glob pattern, a sequence of them
    or a predicate."""
    def matcher(patterns: NamePatterns, default: bool) -> Callable[[str], bool]:
        if patterns is None:
            return lambda name: default
        if callable(patterns):
            return patterns
        plist = [patterns] if isinstance(patterns, str) else list(patterns)
        return lambda name: any(fnmatch.fnmatchcase(name, p) for p in plist)

    inc, exc = matcher(include, True), matcher(exclude, False)
    return lambda name: bool(name) and inc(name) and not exc(name)
