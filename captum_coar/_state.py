"""Keeping the user's model as it was: parameters and buffers unchanged by every public call.

Contract
--------
:func:`model_state_kept` is a context manager around work that runs ``model``: on entry it
copies every buffer (BatchNorm running statistics, ``num_batches_tracked``, ...) and records
the version counter of every parameter; on exit -- after success or an exception -- it writes
back every buffer whose value changed (a model left in train mode updates its BatchNorm
statistics on every forward pass, inside native kernels that leave version counters alone;
unchanged buffers are not written, so autograd graphs that saved them stay valid), and
restores each module's ``training`` flag.
Parameters are never written by this library (gates act through hooks); a parameter whose
version changed anyway (the user's forward function wrote it) raises ``RuntimeError`` naming
it, since the result was computed with weights that changed during the call. Nested uses restore at
every level (an inner call hands the model back as it found it). Copies live on the buffers'
own devices.

:func:`keeps_model_state` decorates a public entry point: the model is found as
``components.model`` of the first :class:`~captum_coar.components.ComponentSet` among the
arguments (or ``self.components``). When the function wraps another (``__wrapped__``, as
Captum's ``log_usage`` leaves it, and which Captum's ``NoiseTunnel`` calls), that one is
wrapped too.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import torch
from torch import nn

from .components import ComponentSet

__all__ = ["model_state_kept", "keeps_model_state"]

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def model_state_kept(model: Optional[nn.Module]) -> Iterator[None]:
    """Restore ``model``'s buffers and train/eval flags on exit; refuse changed parameters."""
    if model is None or not isinstance(model, nn.Module):
        yield
        return
    buffers: List[Tuple[torch.Tensor, torch.Tensor]] = [
        (b, b.detach().clone()) for _, b in model.named_buffers()]
    params = [(name, p, p._version) for name, p in model.named_parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in buffers:  # native kernels (batch_norm) skip version counters
                if not torch.equal(buffer, copy):  # untouched buffers keep their version (autograd
                    buffer.copy_(copy)  # may have saved them for a backward pass still to come)
        for module, training in modes:
            module.training = training
    changed = [name for name, p, version in params if p._version != version]
    if changed:
        raise RuntimeError(
            f"the model's parameters {changed[:8]} were modified in place during the call (not"
            " by captum_coar, whose gates act through hooks); the results were computed with"
            " changing weights. Make the forward function leave the parameters unchanged")


def _find_model(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[nn.Module]:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, ComponentSet):
            return value.model
        components = getattr(value, "components", None)
        if isinstance(components, ComponentSet):
            return components.model
    return None


def keeps_model_state(function: F) -> F:
    """Run ``function`` inside :func:`model_state_kept` for the model its arguments name."""
    if getattr(function, "keeps_model_state", False):
        return function

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with model_state_kept(_find_model(args, kwargs)):
            return function(*args, **kwargs)

    inner = getattr(function, "__wrapped__", None)
    if inner is not None:  # e.g. captum's log_usage: Captum's NoiseTunnel calls __wrapped__
        wrapper.__wrapped__ = keeps_model_state(inner)
    wrapper.keeps_model_state = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
