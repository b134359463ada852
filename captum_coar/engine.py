"""The batched ablation engine's public face: many gate rows per forward pass.

Contract
--------
:func:`evaluate_masks` evaluates ``k`` gate rows (``(k, n_components)``, booleans are keep
masks, True = kept) on ``b`` examples and returns the ``(k, b)`` outputs, running several rows
per forward pass and never touching the model's weights. The implementation, with the row
budget and the out-of-memory halving it uses, is the internal module
:mod:`captum_coar._engine`; this module only names what is public.
"""

from ._engine import evaluate_masks

__all__ = ["evaluate_masks"]
