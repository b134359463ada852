"""Forward equivalents: what a method costs, counted on the model itself.

Contract
--------
Inside ``with ForwardCounter(model) as cost:``, every call of ``model`` (the top-level module;
calls of its submodules are not counted separately) adds the rows of its first tensor
argument (the batch size on dim 0) to ``cost.forwards``; when that call's output takes part in
a backward pass, its rows are added once to ``cost.backwards``. ``cost.equivalents`` is
``forwards + 2 * backwards`` (a backward pass costs about two forward passes), the unit in which
editing methods report their cost. The hooks are removed on exit, also after an exception; the
model is never written. Rows are example forwards: a gated pass of ``r`` mask rows over ``b``
examples counts ``r * b``. Forwards run by another module than ``model`` (a forward function
that calls submodules directly) are not seen: count on the module that is called.
"""

from __future__ import annotations

from typing import Any, List, Optional

from torch import Tensor, nn

from ._checks import check_instance

__all__ = ["ForwardCounter"]


def _rows(values: Any) -> int:
    for value in values if isinstance(values, (tuple, list)) else (values,):
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 0


def _output_tensor(output: Any) -> Optional[Tensor]:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class ForwardCounter:
    """Count example forwards and backwards through ``model`` (see the module contract).

    Attributes:
        forwards: example forward passes counted so far.
        backwards: example backward passes counted so far.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = check_instance("model", model, nn.Module, "an nn.Module")
        self.forwards = 0
        self.backwards = 0
        self._handles: List[Any] = []

    @property
    def equivalents(self) -> int:
        """``forwards + 2 * backwards``."""
        return self.forwards + 2 * self.backwards

    def _after(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        rows = _rows(args) or _rows(tuple(kwargs.values()))
        self.forwards += rows
        tensor = _output_tensor(output)
        if tensor is not None and tensor.requires_grad and rows:
            seen = [False]

            def count(grad: Tensor) -> None:
                if not seen[0]:
                    seen[0] = True
                    self.backwards += rows

            tensor.register_hook(count)

    def __enter__(self) -> "ForwardCounter":
        self._handles.append(self.model.register_forward_hook(self._after, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
