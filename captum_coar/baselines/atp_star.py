"""AtP*: attribution patching with the attention softmax recomputed exactly, and GradDrop.

Contract
--------
:class:`ComponentAtPStar` estimates, like :class:`ComponentAttributionPatching`, the effect
``F(all kept) - F(c ablated)`` of every single component, after Kramar et al. (2024), "AtP*:
An efficient and scalable method for localizing LLM behaviour to components". Plain
attribution patching (AtP) linearises everything, including the attention softmax; where
attention is saturated (a head attends almost only to one position) the softmax's gradient
is about 0 and AtP misses effects that go through a later head's queries and keys (e.g. a
previous-token head feeding an induction head).

*QK fix.* Write ``F`` as a function of the gates ``g`` and of every attention pattern
``A_l = softmax(S_l)``. One backward pass with the patterns frozen gives the gradient of
``F`` along every other path (``dF/dg|A``) and ``G_l = dF/dA_l``. A forward-mode pass with
the patterns frozen gives, for component ``c``, the first-order change of every later score
matrix, ``dS_l = -dS_l/dg_c`` (through values, MLPs and the residual stream); the patterns
are then recomputed *exactly*, ``A_l' = softmax(S_l + dS_l)``, and

    AtP*(c) = dF/dg_c|A - sum_l <G_l, A_l' - A_l>.

Linearising the softmax instead gives back AtP. The tangents of many components run as one
batched forward (row ``i * b + j`` = example ``j`` with component ``i``'s gate tangent).

*GradDrop* (``grad_drop=True``): for each transformer block ``l`` the estimate is recomputed
with the gradient through block ``l``'s writes to the residual stream (its attention output
projection and MLP down projection) dropped; the result is the paper's combination
``mean over l != block(c) of |estimate_l(c)|``, a *magnitude* that guards against effects
that cancel between paths (signs are lost: rank by it, correlate it with ``|effect|``).

Cost per batch, in forward-pass equivalents (a backward ~ 2 forwards): AtP 3; the QK fix adds
3 (frozen forward + backward) and about 1.5-2 per QK-fixed component (forward-mode AD of
the rows of that component; ``qk_fix="heads"`` limits it to attention heads, ``"all"`` takes
MLP neurons too, ``"none"`` gives AtP); GradDrop adds 6 per block (two passes with that
block's gradient dropped). Leave-one-out costs 1 per component.

Requirements: a Hugging Face model whose attention modules dispatch through transformers'
attention interface (Llama, Mistral, Qwen2, GPT-2, GPT-NeoX, ... in transformers 5); during a
call its ``config._attn_implementation`` is switched to an eager implementation that exposes
the scores, and restored afterwards; a mixture-of-experts model's experts implementation is
switched to eager the same way (fused grouped-mm kernels have no forward-mode derivative).
The model must be in eval mode (no attention dropout).
The probe's state is module-global: one AtP* call at a time per process (not thread-safe).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.autograd.forward_ad as fwAD
from captum.log import log_usage
from torch import Tensor, nn

from .._checks import check_choice, check_optional_positive_int
from .._engine import checked_outputs, gates_applied
from .._inputs import example_batches, repeat_rows
from .._modules import model_device
from .._transformers import find_attention, find_mlp_down_projections
from ._base import (
    Attributions,
    ComponentGradientMethod,
    OutputSpec,
    format_inputs,
    format_result,
)
from ._layer_gradients import gate_gradients

__all__ = ["ComponentAtPStar"]

_IMPLEMENTATION = "captum_coar_atp"


class _Probe:
    """State shared with the attention function: mode and what each attention call saw."""

    def __init__(self) -> None:
        self.mode = "plain"  # plain | freeze | tangent
        self.scores: List[Tensor] = []
        self.patterns: List[Tensor] = []
        self.tangents: List[Tensor] = []

    def reset(self, mode: str) -> None:
        self.mode, self.scores, self.patterns, self.tangents = mode, [], [], []


_PROBE = _Probe()


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
               attention_mask: Optional[Tensor], scaling: Optional[float] = None,
               dropout: float = 0.0, **kwargs: Any) -> Tuple[Tensor, Tensor]:
    """Eager attention that exposes scores and patterns to :class:`ComponentAtPStar`."""
    if dropout and module.training:
        raise ValueError("AtP* needs the model in eval mode (attention dropout is active);"
                         " call model.eval() first")
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads != heads:  # grouped- or multi-query attention: one k/v per group of heads
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros_like(attention_mask, dtype=scores.dtype).masked_fill(
                ~attention_mask, torch.finfo(scores.dtype).min)
        scores = scores + attention_mask[..., : key.shape[-2]]
    elif getattr(module, "is_causal", False) and query.shape[-2] > 1:
        t, s = query.shape[-2], key.shape[-2]
        future = torch.ones(t, s, dtype=torch.bool, device=scores.device).triu(s - t + 1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    probe = _PROBE
    if probe.mode == "tangent":
        primal, tangent = fwAD.unpack_dual(scores)
        if tangent is None:
            tangent = torch.zeros_like(primal)
        # masked scores stay masked: no tangent where the mask added the dtype's minimum
        masked = primal <= torch.finfo(primal.dtype).min / 2
        probe.tangents.append(torch.where(masked, torch.zeros_like(tangent), tangent))
        pattern = torch.softmax(primal.float(), dim=-1).to(value.dtype)  # frozen: no tangent
    else:
        pattern = torch.softmax(scores.float(), dim=-1).to(value.dtype)
        if probe.mode == "freeze":
            probe.scores.append(scores.detach())
            pattern = pattern.detach().requires_grad_(torch.is_grad_enabled())
            probe.patterns.append(pattern)
    output = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return output, pattern


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(_IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(_IMPLEMENTATION, eager_mask)


@contextmanager
def _probed(model: nn.Module) -> Iterator[_Probe]:
    """Switch every config of ``model`` to the probing attention; restore on exit."""
    _register()
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules())
               if c is not None and hasattr(c, "_attn_implementation")}
    if not configs:
        raise TypeError(
            f"`forward_func`'s model must be a Hugging Face model with a config (its attention"
            f" dispatching through transformers' attention interface); got"
            f" {type(model).__name__}. Use ComponentAttributionPatching or ComponentAblation")
    previous = {key: c._attn_implementation for key, c in configs.items()}
    # mixture-of-experts kernels (grouped_mm) have no forward-mode AD: eager experts meanwhile
    experts = {key: c._experts_implementation for key, c in configs.items()
               if getattr(c, "_experts_implementation", None) not in (None, "eager")}
    try:
        for key, c in configs.items():
            c._attn_implementation = _IMPLEMENTATION
            if key in experts:
                c._experts_implementation = "eager"
        _PROBE.reset("plain")
        yield _PROBE
    finally:
        for key, c in configs.items():
            c._attn_implementation = previous[key]
            if key in experts:
                c._experts_implementation = experts[key]
        _PROBE.reset("plain")


def _block_of(name: str) -> Optional[str]:
    """``transformer.h.3`` for ``transformer.h.3.attn.c_proj``: the prefix up to the first index."""
    match = re.match(r"^(.*?\.\d+)(\.|$)", name)
    return match.group(1) if match else None


@contextmanager
def _gradient_dropped(modules: List[nn.Module]) -> Iterator[None]:
    """Forward hooks that cut the gradient through ``modules``' outputs (values unchanged)."""
    handles = [m.register_forward_hook(lambda mod, args, out: out.detach()) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ComponentAtPStar(ComponentGradientMethod):
    """AtP* estimate of every single-component ablation effect (see the module docs).

    Args:
        forward_func: a Hugging Face model or a function of ``(*inputs, *extra)`` running it.
        components: the components (of ``components.model``, the model that is probed).
        ablation: the ablation strategy that defines the replacement.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from captum_coar import ComponentAtPStar, attention_heads
        >>> from captum_coar.language_outputs import LanguageModelForward
        >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1,
        ...                                    n_head=2)).eval()
        >>> ids = torch.randint(0, 16, (3, 5))
        >>> (star,) = ComponentAtPStar(LanguageModelForward(model), attention_heads(model)).attribute(
        ...     (ids, torch.ones_like(ids)), target=torch.tensor([1, 2, 3]), output="token_log_prob")
        >>> star.shape                                              # 3 prompts x 2 heads
        torch.Size([3, 2])
    """

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: Any = None,
        additional_forward_args: Any = None,
        output: OutputSpec = None,
        qk_fix: str = "heads",
        grad_drop: bool = False,
        internal_batch_size: Optional[int] = None,
        qk_rows: int = 256,
        baselines: Any = None,
    ) -> Attributions:
        """AtP* estimates ``(batch, n_components)`` (magnitudes when ``grad_drop``).

        Args:
            qk_fix: which components get the exact softmax: ``"heads"`` (attention heads),
                ``"all"``, or ``"none"`` (plain AtP, or AtP + GradDrop).
            grad_drop: combine per-block GradDrop estimates into magnitudes.
            internal_batch_size: examples per pass (default all).
            qk_rows: rows (examples x components) per forward-mode pass of the QK fix.
            baselines: paired reference inputs shaped like ``inputs`` (the AtP* paper's
                setting): the replacement is the activation on the paired baseline, with the
                QK fix and GradDrop as above.
        """
        check_choice("qk_fix", qk_fix, ("heads", "all", "none"))
        inputs_t, extra, n_examples = format_inputs(inputs, additional_forward_args)
        output_fn = self._start(output, target, inputs_t, baselines, extra)
        per_pass = check_optional_positive_int("internal_batch_size", internal_batch_size)
        qk_rows = check_optional_positive_int("qk_rows", qk_rows) or 256
        fixed = self._qk_columns(qk_fix)
        drops = self._drop_sets() if grad_drop else []
        parts = []
        with _probed(self.components.model) as probe, self._gates() as hooks:
            for rows, batch, batch_extra, batch_target in example_batches(
                    inputs_t, extra, target, per_pass or n_examples):
                parts.append(self._batch(probe, hooks, batch, batch_extra, batch_target,
                                         output_fn, rows, fixed, drops, qk_rows))
        return format_result(torch.cat(parts), inputs)

    # ------------------------------------------------------------------ pieces
    def _qk_columns(self, qk_fix: str) -> Tensor:
        if qk_fix == "none":
            return torch.zeros(0, dtype=torch.long)
        kinds = ("head", "cross_head") if qk_fix == "heads" else None
        cols = [torch.arange(self.components.offsets[p], self.components.offsets[p + 1])
                for p, g in enumerate(self.components.groups) if kinds is None or g.kind in kinds]
        return torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long)

    def _drop_sets(self) -> List[Tuple[List[nn.Module], Tensor]]:
        """Per block: its residual writers and the columns of components outside it."""
        model = self.components.model
        sites = find_attention(model)
        writers = [s.projection_name for s in sites] + find_mlp_down_projections(model, sites)
        blocks: Dict[str, List[str]] = {}
        for name in writers:
            block = _block_of(name)
            if block is None:
                raise ValueError(
                    f"grad_drop needs numbered transformer blocks; module {name!r} is in none")
            blocks.setdefault(block, []).append(name)
        if len(blocks) < 2:
            raise ValueError(f"grad_drop needs at least two transformer blocks; found {list(blocks)}")
        modules = dict(model.named_modules())
        own = [_block_of(g.module_name) for g in self.components.groups
               for _ in range(g.n_components)]
        return [([modules[n] for n in names],
                 torch.tensor([b != block for b in own], dtype=torch.bool))
                for block, names in blocks.items()]

    def _frozen(self, probe: _Probe, hooks: Any, batch: Tuple[Tensor, ...],
                extra: Tuple[Any, ...], target: Any, output_fn: Any, example_index: Tensor
                ) -> Tuple[Tensor, List[Tensor], List[Tensor], List[Tensor]]:
        """``dF/dg`` with patterns frozen, ``G_l``, scores and patterns of every attention call."""
        device = model_device(self.components.model)
        n_rows = batch[0].shape[0]
        probe.reset("freeze")
        with torch.enable_grad():
            gates = torch.ones(n_rows, self.n_components, device=device, requires_grad=True)
            with gates_applied(hooks, gates, example_index):
                values = checked_outputs(output_fn(self.forward_func(*batch, *extra), target),
                                         n_rows, output_fn)
            if not probe.patterns:
                raise TypeError(
                    "AtP* saw no attention call through transformers' attention interface; the"
                    f" model ({type(self.components.model).__name__}) computes attention another"
                    " way. Use ComponentAttributionPatching or ComponentAblation")
            grads = torch.autograd.grad(values.sum(), [gates] + probe.patterns,
                                        allow_unused=True)
        fill = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], probe.patterns)]
        gate_grad = torch.zeros_like(gates) if grads[0] is None else grads[0]
        patterns = [p.detach() for p in probe.patterns]
        scores = probe.scores
        probe.reset("plain")
        return gate_grad.detach(), fill, scores, patterns

    def _pattern_changes(self, probe: _Probe, hooks: Any, batch: Tuple[Tensor, ...],
                         extra: Tuple[Any, ...], columns: Tensor, scores: List[Tensor],
                         patterns: List[Tensor], example_index: Tensor) -> List[Tensor]:
        """``A_l' - A_l`` for every component in ``columns``: rows ``i * b + j``."""
        device = model_device(self.components.model)
        n_examples, n_cols = batch[0].shape[0], columns.numel()
        n_rows = n_examples * n_cols
        tangent = torch.zeros(n_rows, self.n_components, device=device)
        tangent[torch.arange(n_rows, device=device),
                columns.to(device).repeat_interleave(n_examples)] = 1.0
        probe.reset("tangent")
        with torch.no_grad(), fwAD.dual_level():
            gates = fwAD.make_dual(torch.ones(n_rows, self.n_components, device=device), tangent)
            with gates_applied(hooks, gates, example_index.repeat(n_cols)):
                self.forward_func(*repeat_rows(batch, n_cols, n_examples),
                                  *repeat_rows(extra, n_cols, n_examples))
            tangents = [t.detach() for t in probe.tangents]
        probe.reset("plain")
        changes = []
        for s, a, t in zip(scores, patterns, tangents):
            s_rep = s.repeat(n_cols, *([1] * (s.dim() - 1)))
            a_rep = a.repeat(n_cols, *([1] * (a.dim() - 1)))
            # ablating c moves g_c from 1 to 0: first-order score change -t, exact softmax
            changes.append(torch.softmax((s_rep - t).float(), dim=-1).to(a.dtype) - a_rep)
        return changes

    def _batch(self, probe: _Probe, hooks: Any, batch: Tuple[Tensor, ...],
               extra: Tuple[Any, ...], target: Any, output_fn: Any, rows: slice,
               fixed: Tensor, drops: List[Tuple[List[nn.Module], Tensor]], qk_rows: int) -> Tensor:
        device = model_device(self.components.model)
        n_examples = batch[0].shape[0]
        example_index = torch.arange(rows.start, rows.stop, device=device)
        ones = torch.ones(n_examples, self.n_components, device=device)
        passes: List[Tuple[Tensor, Tensor, List[Tensor]]] = []  # (AtP, frozen grad, G_l)
        scores: List[Tensor] = []
        patterns: List[Tensor] = []
        dropped_sets: List[List[nn.Module]] = [[]] + [modules for modules, _ in drops]
        for dropped in dropped_sets:
            with _gradient_dropped(dropped):
                _, atp = gate_gradients(self.forward_func, hooks, batch, extra, ones,
                                        example_index, target, output_fn)
                frozen, grads, s, a = (self._frozen(probe, hooks, batch, extra, target,
                                                    output_fn, example_index)
                                       if fixed.numel() else (atp, [], [], []))
            passes.append((atp, frozen, grads))
            scores, patterns = (s, a) if not scores else (scores, patterns)
        estimates = [atp.clone() for atp, _, _ in passes]
        per_chunk = max(1, qk_rows // n_examples)
        for start in range(0, fixed.numel(), per_chunk):
            columns = fixed[start:start + per_chunk]
            changes = self._pattern_changes(probe, hooks, batch, extra, columns, scores,
                                            patterns, example_index)
            for estimate, (_, frozen, grads) in zip(estimates, passes):
                term = torch.zeros(columns.numel(), n_examples, device=device)
                for g, d in zip(grads, changes):
                    term += (g.repeat(columns.numel(), *([1] * (g.dim() - 1))) * d).reshape(
                        columns.numel(), n_examples, -1).sum(dim=2)
                cols = columns.to(device)
                estimate[:, cols] = frozen[:, cols] - term.T
        if not drops:
            return estimates[0]
        outside = torch.stack([mask for _, mask in drops]).to(device)  # (blocks, n_components)
        magnitudes = torch.stack([e.abs() for e in estimates[1:]])  # (blocks, b, n_components)
        counts = outside.sum(dim=0).clamp(min=1)
        return (magnitudes * outside[:, None, :]).sum(dim=0) / counts

