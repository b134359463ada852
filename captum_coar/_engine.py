"""Batched ablation engine: many gate rows evaluated on a batch of examples per forward pass.

Contract
--------
:func:`evaluate_masks` takes ``k`` gate rows (``(k, n_components)``; booleans are keep masks,
True = kept) and ``b`` examples and returns the output of every (row, example) pair as a
``(k, b)`` tensor. ``p`` rows at a time run as ONE forward pass of ``p * b`` inputs laid out
row-major (input row ``i * b + j`` is example ``j`` under gate row ``i``), with ``p`` chosen
from ``perturbations_per_eval`` or the ``max_rows`` budget (default by device: 128 rows on a
CPU, where larger batches run slower per row, 4096 on an accelerator); when ``b`` alone exceeds
the budget, examples are split too. The model's weights are never modified: gates act through
the hooks of :mod:`captum_coar.gates`. Results do not depend on ``p`` beyond float rounding of
the model's own batched arithmetic.

When a forward pass runs out of memory (an accelerator's out-of-memory error), the rows per
pass are halved and the pass retried; rows already computed are kept, and the input rows per
pass that fit are remembered for the model (:mod:`captum_coar._memory`), capping the budget
of later calls. Only one gate row that still does not fit raises, asking for a smaller
``max_rows`` (which splits the examples too).

Also here, for the attribution classes: the row budget (:func:`default_max_rows`,
:func:`rows_per_pass`), setting the per-row gates of entered hooks for one forward pass
(:func:`gates_applied`, which checks after the first gated pass that every component's
module ran) and checking that an output function gave one value per row
(:func:`checked_outputs`). Input conventions live in :mod:`captum_coar._inputs`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

from ._checks import check_positive_int
from ._inputs import (
    TensorOrTuple,
    example_batches,
    expand_target,
    input_tuple,
    repeat_rows,
)
from ._memory import ROW_BUDGETS, is_out_of_memory, release_cached
from ._modules import model_device
from ._state import keeps_model_state
from .ablation import AblationStrategy, fitted_ablation
from .components import ComponentSet
from .gates import ComponentGates
from .outputs import OutputFunction, resolve_output

__all__ = ["evaluate_masks", "gated_outputs", "rows_per_pass", "progress", "gates_applied",
           "checked_outputs", "default_max_rows"]

CPU_MAX_ROWS = 128
ACCELERATOR_MAX_ROWS = 4096


def default_max_rows(device: Union[torch.device, str, None]) -> int:
    """Default forward-pass row budget on ``device``: 128 on a CPU, 4096 on an accelerator.

    On a CPU the time per row of a small conv net or transformer is lowest at about 64-128
    rows per batch and grows beyond (about 1.3x at 256-512 rows and 3x at 4096, once the
    activations spill out of the caches; ``benchmarks/speed.py``); accelerators want large
    batches.
    """
    return CPU_MAX_ROWS if torch.device(device or "cpu").type == "cpu" else ACCELERATOR_MAX_ROWS


def rows_per_pass(n_examples: int, perturbations_per_eval: Optional[int],
                  max_rows: Optional[int], device: Union[torch.device, str, None] = None) -> int:
    """Gate rows per forward pass: the user's choice, else as many as ``max_rows`` allows
    (``None``: :func:`default_max_rows` of ``device``)."""
    if perturbations_per_eval is not None:
        return check_positive_int("perturbations_per_eval", perturbations_per_eval)
    if max_rows is None:
        max_rows = default_max_rows(device)
    return max(1, check_positive_int("max_rows", max_rows) // max(1, n_examples))


def progress(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar when ``enabled`` (tqdm imported lazily), else a no-op object."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc)

    class _Silent:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Silent()


@contextmanager
def gates_applied(hooks: Optional[ComponentGates], values: Optional[Tensor],
                  example_index: Optional[Tensor]) -> Iterator[None]:
    """Set per-row gate ``values`` (and example indices) on entered ``hooks`` for one forward
    pass; the hooks pass activations through again afterwards. ``hooks=None`` does nothing."""
    if hooks is None:
        yield
        return
    hooks.values, hooks.example_index = values, example_index
    try:
        yield
        if values is not None:
            hooks.check_all_ran()  # the first gated pass must have run every component
    finally:
        hooks.values, hooks.example_index = None, None


def checked_outputs(values: Tensor, n_rows: int, output_fn: OutputFunction) -> Tensor:
    """``values`` when it holds one output per row; ``ValueError`` naming the shape otherwise."""
    if values.shape != (n_rows,):
        raise ValueError(
            f"the output function {output_fn.name!r} returned shape {tuple(values.shape)}; expected"
            f" one value per row, ({n_rows},)"
        )
    return values


def gated_outputs(
    forward_func: Callable[..., Any],
    hooks: ComponentGates,
    inputs: Tuple[Tensor, ...],
    extra: Tuple[Any, ...],
    gates: Tensor,
    target: Any,
    output_fn: OutputFunction,
    example_offset: int = 0,
) -> Tensor:
    """Outputs ``(p, b)`` of ``b`` examples under each of ``p`` gate rows, in ONE forward pass.

    ``gates`` is ``(p, n_components)``, one gate row for every example, or
    ``(p, b, n_components)``, a gate row of its own for each example. ``example_offset`` is the
    index of the first example within the caller's whole batch, so strategies that pair
    examples with reference rows (resample) see global indices.
    """
    n_examples, n_gate_rows = inputs[0].shape[0], gates.shape[0]
    if gates.dim() == 3:
        row_gates = gates.reshape(n_gate_rows * n_examples, -1)
    elif n_examples > 1:  # row i * b + j = gate row i (a copy, as repeat_interleave gives)
        row_gates = gates.unsqueeze(1).expand(-1, n_examples, -1).reshape(
            n_gate_rows * n_examples, -1)
    else:
        row_gates = gates
    example_index = (torch.arange(n_examples, device=gates.device) + example_offset
                     ).repeat(n_gate_rows)
    with gates_applied(hooks, row_gates, example_index):
        model_output = forward_func(*repeat_rows(inputs, n_gate_rows, n_examples),
                                    *repeat_rows(extra, n_gate_rows, n_examples))
        values = output_fn(model_output, expand_target(target, n_examples, n_gate_rows))
    return checked_outputs(values, n_gate_rows * n_examples, output_fn).reshape(n_gate_rows,
                                                                               n_examples)


def _halved(error: Exception, rows: slice, examples: slice, components: ComponentSet) -> int:
    """Gate rows per pass after ``error``: half of ``rows`` for an out-of-memory error (the
    input rows per pass that fit are remembered for the model); any other error is re-raised."""
    if not is_out_of_memory(error):
        raise error
    n_rows = rows.stop - rows.start
    n_examples = examples.stop - examples.start
    if n_rows == 1:
        raise RuntimeError(
            f"out of memory with one gate row of {n_examples} examples per forward pass; pass"
            f" max_rows below {n_examples} to split the examples as well") from error
    release_cached()
    per_pass = max(1, n_rows // 2)
    ROW_BUDGETS.remember(components.model, per_pass * n_examples)
    return per_pass


@keeps_model_state
def evaluate_masks(
    forward_func: Callable[..., Any],
    components: ComponentSet,
    inputs: TensorOrTuple,
    masks: Tensor,
    target: Any = None,
    additional_forward_args: Any = None,
    output: Union[str, OutputFunction, Callable[..., Tensor], None] = None,
    ablation: Union[str, AblationStrategy] = "weights",
    perturbations_per_eval: Optional[int] = None,
    max_rows: Optional[int] = None,
    show_progress: bool = False,
    hooks: Optional[ComponentGates] = None,
    example_offset: int = 0,
) -> Tensor:
    """Outputs ``(k, b)`` for ``k`` gate rows ``masks`` and the ``b`` examples of ``inputs``.

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: the components the columns of ``masks`` refer to.
        masks: ``(k, n_components)``, bool keep masks or float gates in ``[0, 1]``.
        output: output function (see :mod:`captum_coar.outputs`); default margin with a
            target, logit without.
        perturbations_per_eval: gate rows per forward pass; default ``max_rows // b``.
        max_rows: rows per forward pass when ``perturbations_per_eval`` is None; None = the
            model's device's default (:func:`default_max_rows`: 128 on a CPU, 4096 else).
        hooks: an already-entered :class:`ComponentGates` to reuse (for loops over batches).
        example_offset: index of the first example of ``inputs`` in the whole data set (so
            resample ablation pairs examples with the same reference rows in every batching).

    Runs under ``torch.no_grad()``. The result stays on the device of the model's output.
    """
    inputs_t = input_tuple(inputs)
    masks = torch.as_tensor(masks)
    if masks.dim() != 2 or masks.shape[1] != components.n_components:
        raise ValueError(
            f"masks must have shape (k, {components.n_components}) for this ComponentSet, got"
            f" {tuple(masks.shape)}"
        )
    output_fn = resolve_output(output, target)
    n_examples, n_masks = inputs_t[0].shape[0], masks.shape[0]
    device = model_device(components.model)
    gates_all = masks.to(device=device, dtype=torch.float32)
    if max_rows is None:
        max_rows = default_max_rows(device)
    if perturbations_per_eval is None:  # a size that ran out of memory before is not retried
        max_rows = ROW_BUDGETS.cap(components.model, max_rows)
    example_chunk = min(n_examples, max_rows) if perturbations_per_eval is None else n_examples
    per_pass = rows_per_pass(example_chunk, perturbations_per_eval, max_rows)
    results = torch.empty(n_masks, n_examples)
    bar = progress(n_masks * n_examples, show_progress, "ablated forwards")
    context = hooks if hooks is not None else ComponentGates(
        components, fitted_ablation(ablation, forward_func, components))
    owns_context = hooks is None
    try:
        if owns_context:
            context.__enter__()
        with torch.no_grad():
            for examples, batch, extra, chunk_target in example_batches(
                    inputs_t, additional_forward_args, target, example_chunk):
                start = 0
                while start < n_masks:
                    rows = slice(start, min(start + per_pass, n_masks))
                    try:
                        values = gated_outputs(forward_func, context, batch, extra,
                                               gates_all[rows], chunk_target, output_fn,
                                               example_offset=example_offset + examples.start)
                    except Exception as error:  # out of memory: halve the rows per pass
                        per_pass = _halved(error, rows, examples, components)
                        continue
                    if results.device != values.device or results.dtype != values.dtype:
                        results = results.to(device=values.device, dtype=values.dtype)
                    results[rows, examples] = values
                    bar.update(values.numel())
                    start = rows.stop
    finally:
        if owns_context:
            context.__exit__(None, None, None)
        bar.close()
    return results

