"""Running ``nn.MultiheadAttention``'s output projection as a module, so hooks on it fire.

Contract
--------
``nn.MultiheadAttention`` computes its output projection functionally, so hooks on its
``out_proj`` never fire. :func:`patch_multihead_attention` gives each such module whose
``out_proj`` is a grouped module of a :class:`~captum_coar.components.ComponentSet` an
instance-level forward that asks ``F.multi_head_attention_forward`` for the concatenated heads
(identity output weight, no bias) and then calls ``out_proj`` as a module, so head gates at
``out_proj``'s input, and neuron gates at its output, apply as everywhere else. A module that
is already patched (by an enclosing context) is left alone and not returned, so nested
contexts each remove only their own patches; :func:`unpatch_multihead_attention` removes them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .components import ComponentSet

__all__ = ["patch_multihead_attention", "unpatch_multihead_attention"]


def patch_multihead_attention(components: ComponentSet) -> List[nn.MultiheadAttention]:
    """Patch every ``nn.MultiheadAttention`` whose ``out_proj`` is grouped; return those patched."""
    grouped = {g.module_name for g in components.groups}
    patched = []
    for name, module in components.model.named_modules():
        if (isinstance(module, nn.MultiheadAttention) and f"{name}.out_proj" in grouped
                and "forward" not in module.__dict__):
            module.forward = _module_out_proj_forward(module)  # type: ignore[method-assign]
            patched.append(module)
    return patched


def unpatch_multihead_attention(patched: List[nn.MultiheadAttention]) -> None:
    """Remove the patches of :func:`patch_multihead_attention` (empties ``patched``)."""
    for mha in patched:
        mha.__dict__.pop("forward", None)
    patched.clear()


def _module_out_proj_forward(mha: nn.MultiheadAttention) -> Callable[..., Tuple[Tensor, Any]]:
    """A forward for ``mha`` that runs ``mha.out_proj`` as a module on the concatenated heads."""

    def forward(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> Tuple[Tensor, Any]:
        if query.dim() != 3:
            raise ValueError(
                "gating heads of nn.MultiheadAttention needs batched 3-d inputs, got a query of"
                f" shape {tuple(query.shape)}"
            )
        if mha.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        embed_dim = mha.embed_dim
        identity = torch.eye(embed_dim, dtype=query.dtype, device=query.device)
        extra: Dict[str, Any] = {}
        if not mha._qkv_same_embed_dim:
            extra = dict(use_separate_proj_weight=True, q_proj_weight=mha.q_proj_weight,
                         k_proj_weight=mha.k_proj_weight, v_proj_weight=mha.v_proj_weight)
        heads, weights = F.multi_head_attention_forward(
            query, key, value, embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias,
            mha.bias_k, mha.bias_v, mha.add_zero_attn, mha.dropout, identity, None,
            training=mha.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
            **extra,
        )
        output = mha.out_proj(heads.transpose(0, 1))  # batch first, so gates see batch on axis 0
        return (output if mha.batch_first else output.transpose(0, 1)), weights

    return forward
