"""The factual-recall task of setup D with a corrupted subject, for activation patching.

Contract
--------
``recall_task(n, quick=False, seed=20_240_611, cache_dir=None) -> PatchingTask`` loads (or trains, through
``benchmarks.train.train_or_load("llama")``) the small Llama-style model of setup D and draws
``n`` left-padded associative-recall prompts ``k1 v1 ... kp vp q`` (``make_recall_data``).
The *subject* is the fact the query asks about: the in-context key ``k_s`` equal to the query
``q``. The corrupted prompt replaces that one token by a key absent from the prompt
(symmetric token replacement: same length, same padding, positions aligned), so the query no
longer matches any pair and the answer is undetermined. ``inputs`` = ``(input_ids,
attention_mask)``, ``baselines`` = ``(corrupted_ids, attention_mask)`` (noising),
``forward`` = ``LanguageModelForward(model)``, ``target`` = ``[answer, distractor]`` ids
(distractor: the value of another pair of the prompt) for ``output="logit_difference"``.
``positions`` holds the per-example named token positions of the causal-tracing grid
(``grid_columns``): "other key" / "other value" (the distractor's pair), "subject"
(``k_s``), "subject value" (``v_s``, the token after it) and "query" (the last token).

``tracing_components(model, positions)`` is the residual stream at those positions: the
token embedding (the input embedding module, "layer -1") and every block's output, as
one :class:`~captum_coar.ComponentSet` for the layer x position grid.

``ioi_task(model, data, info)`` wraps IOI data (``benchmarks.patching.ioi``) in the same
:class:`PatchingTask` shape, its grid columns every position by role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from benchmarks.data import make_recall_data
from benchmarks.patching.ioi import POSITION_NAMES
from benchmarks.train import recipe, train_or_load
from captum_coar import ComponentSet
from captum_coar.language_outputs import LanguageModelForward
from captum_coar.positions import residual_group, residual_stream

GRID_POSITIONS = ("other key", "other value", "subject", "subject value", "query")


@dataclass
class PatchingTask:
    """A model with paired clean/corrupted prompts and a logit-difference target."""

    name: str
    model: nn.Module
    forward: Any
    inputs: Any
    baselines: Any
    target: Tensor
    positions: Dict[str, Tensor]
    info: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    grid_columns: Tuple[str, ...] = GRID_POSITIONS


def _corrupt_subject(ids: Tensor, mask: Tensor, n_keys: int, seed: int
                     ) -> Tuple[Tensor, Tensor]:
    """Corrupted ids and the subject's index per row (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    corrupted, subject = ids.clone(), torch.zeros(ids.shape[0], dtype=torch.long)
    for row in range(ids.shape[0]):
        query = ids[row, -1]
        where = torch.nonzero((ids[row, :-1] == query) & (mask[row, :-1] == 1)).flatten()
        subject[row] = where[0]
        present = set(ids[row].tolist())
        absent = [k for k in range(1, n_keys + 1) if k not in present]
        corrupted[row, subject[row]] = absent[int(torch.randint(len(absent), (1,), generator=g))]
    return corrupted, subject


def recall_task(n: int, quick: bool = False, seed: int = 20_240_611,
                cache_dir: Any = None) -> PatchingTask:
    """Setup D's recall model and ``n`` clean/corrupted prompts (module docstring)."""
    model, info = train_or_load("llama", quick=quick, cache_dir=cache_dir, verbose=False)
    cfg = recipe("llama", quick)["data"]
    data = make_recall_data(n, seed=seed, **cfg)
    corrupted, subject = _corrupt_subject(data.input_ids, data.attention_mask, cfg["n_keys"],
                                          seed + 1)
    other_value = torch.nonzero(data.input_ids == data.distractor[:, None])[:, 1]
    positions = {"other key": other_value - 1, "other value": other_value,
                 "subject": subject, "subject value": subject + 1,
                 "query": torch.full((n,), data.input_ids.shape[1] - 1)}
    mask = data.attention_mask
    notes = ["corrupted prompt: the in-context subject key (the pair the query asks about)"
             " replaced by a key absent from the prompt; the answer is then undetermined"]
    return PatchingTask("recall", model, LanguageModelForward(model), (data.input_ids, mask),
                        (corrupted, mask), torch.stack([data.answer, data.distractor], 1),
                        positions, info, notes)


def ioi_task(model: nn.Module, data: Any, info: Dict[str, Any]) -> PatchingTask:
    """IOI data as a :class:`PatchingTask` (the model called on ``input_ids``)."""
    notes = [f"corruption {data.corruption!r}: S2 replaced"
             + (" by the IO name (the corrupted answer is the subject)"
                if data.corruption == "s2_io" else " by a third name")]
    return PatchingTask("ioi", model, model, data.input_ids, data.corrupted_ids, data.target,
                        data.positions, info, notes, POSITION_NAMES)


def named_positions(task: PatchingTask) -> List[Any]:
    """``[(name, indices), ...]`` of the grid's columns, for ``positions=``."""
    return [(name, task.positions[name]) for name in task.grid_columns]


def tracing_components(model: nn.Module, positions: List[Any]) -> ComponentSet:
    """Token embedding + every decoder layer's output at ``positions`` (module docstring)."""
    table = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is table)
    embedding = residual_group(model, name, positions=positions)
    layers = residual_stream(model, positions=positions)
    return ComponentSet(model, [embedding] + list(layers.groups))
