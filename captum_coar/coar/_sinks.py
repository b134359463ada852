"""Where collected outputs go: a store (resumable, row by row) or sufficient statistics.

Contract
--------
A sink is told, per chunk of mask rows, ``start_chunk(rows, masks)``, then ``write(rows,
examples, outputs)`` for every batch of examples, then ``end_chunk(rows, masks)``;
``pending(rows)`` says how many leading examples of each row are already done (so a resumed
collection skips them). :class:`StoreSink` writes masks and outputs into a
:class:`~captum_coar.stores.base.MaskOutputStore` and commits progress after each batch
(re-collecting, with a warning, rows whose stored mask differs from the sampler's, and
redoing uneven chunks as one undamaged pass; the rows of a grown store on either side of a
growth boundary count as separate parts, so its old rows are never redone); :func:`repair` resets the chunks of damaged rows
before a resume. :class:`StatisticsSink` buffers one chunk and adds its rows (with their
indices) to training or validation :class:`~captum_coar.solvers.statistics.
SufficientStatistics`.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..solvers.statistics import SufficientStatistics
from ..stores._growth import growth_boundaries
from ..stores._integrity import describe_rows
from ..stores.base import MaskOutputStore

__all__ = ["StoreSink", "StatisticsSink", "repair", "warn_recollect"]


class StoreSink:
    """Writes outputs into a store; knows which rows still need which examples."""

    def __init__(self, store: MaskOutputStore) -> None:
        self.store = store

    def pending(self, rows: np.ndarray) -> np.ndarray:
        return self.store.progress(rows)

    def start_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        """Write the masks of new rows; recollect written rows whose stored mask differs."""
        progress = self.store.progress(rows)
        written = progress > 0
        if written.any():
            stored = self.store.read_masks(rows[written])
            differs = (stored != masks[torch.from_numpy(written)].cpu()).any(dim=1).numpy()
            if differs.any():  # redo the whole chunk: the same passes as an undamaged run
                bad = rows[written][differs]
                warn_recollect(self.store, bad, "their stored masks differ from the sampler's")
                self.store.reset_rows(rows)
                progress = self.store.progress(rows)
        # rows on either side of a growth boundary are separate parts (old rows never redone)
        part = np.searchsorted(growth_boundaries(self.store.metadata), rows, side="right")
        for value in np.unique(part):
            inside = part == value
            if progress[inside].min() != progress[inside].max():  # uneven (a kill mid-commit,
                self.store.reset_rows(rows[inside], int(progress[inside].min()))  # a damaged
                progress = self.store.progress(rows)  # file): redo as one undamaged pass
        todo = progress == 0
        if todo.any():
            self.store.write_masks(rows[todo], masks[torch.from_numpy(todo)])

    def write(self, rows: np.ndarray, examples: slice, outputs: Tensor) -> None:
        self.store.write_outputs(rows, examples, outputs)
        self.store.commit(rows, examples.stop)

    def end_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        pass


def warn_recollect(store: MaskOutputStore, rows: np.ndarray, why: str) -> None:
    warnings.warn(f"{store.location}: recollecting {describe_rows(rows)} (with the rest of their"
                  f" chunk, so every pass is the one an undamaged run makes) because {why} (the"
                  " file was damaged); the result is the same as an undamaged run",
                  UserWarning, stacklevel=4)


def repair(store: MaskOutputStore, rows: np.ndarray, chunk: int) -> None:
    """Reset the chunks of rows whose progress is out of range or whose checksum fails."""
    out_of_range, mismatch = store.damaged_rows(rows)
    if out_of_range.size:
        warn_recollect(store, out_of_range, "their progress lies outside [0, n_examples]")
    if mismatch.size:
        warn_recollect(store, mismatch, "their masks or outputs do not match their checksums")
    damaged = np.concatenate([out_of_range, mismatch])
    if damaged.size:
        store.reset_rows(rows[np.isin(rows // chunk, damaged // chunk)])


class StatisticsSink:
    """Buffers one chunk's outputs and adds complete rows to the statistics."""

    def __init__(self, train: SufficientStatistics, validation: Optional[SufficientStatistics],
                 first_validation_row: int, n_examples: int) -> None:
        self.train, self.validation = train, validation
        self.first_validation_row = first_validation_row
        self.n_examples = n_examples
        self.buffer: Optional[Tensor] = None

    def pending(self, rows: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows), dtype=np.int64)

    def start_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        self.buffer = None

    def write(self, rows: np.ndarray, examples: slice, outputs: Tensor) -> None:
        if self.buffer is None:
            self.buffer = torch.empty(len(rows), self.n_examples, dtype=outputs.dtype,
                                      device=outputs.device)
        self.buffer[:, examples] = outputs

    def end_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        if self.buffer is None:
            return
        held_np = rows >= self.first_validation_row
        masks = masks.to(self.buffer.device)
        held_out = torch.from_numpy(held_np).to(self.buffer.device)
        if (~held_out).any():
            self.train.update(masks[~held_out], self.buffer[~held_out], rows=rows[~held_np])
        if held_out.any():
            assert self.validation is not None
            self.validation.update(masks[held_out], self.buffer[held_out], rows=rows[held_np])
        self.buffer = None
