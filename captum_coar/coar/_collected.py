"""Collected sufficient statistics with the identity of the collection that made them.

Contract
--------
:class:`CollectedStatistics` holds the statistics of training rows and of held-out
(validation) rows, plus ``settings``: the collection's identity
(:mod:`captum_coar.coar._identity`), ``n_validation`` and the ``rows`` covered as
``[start, stop)`` runs (:func:`row_ranges`). :meth:`CollectedStatistics.merge` adds another
part in place after checking that both carry the same identity (a field missing on one side is
a difference) and that no row is counted twice; parts without any identity (built by hand) are
added only to each other. :func:`captum_coar.coar.shards.merge_statistics` is the checked merge
of many sources (stores, files, statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..solvers.statistics import SufficientStatistics
from ._identity import check_same_identity

__all__ = ["CollectedStatistics", "row_ranges", "rows_of"]


def row_ranges(rows: np.ndarray) -> List[List[int]]:
    """Sorted unique rows as ``[[start, stop), ...]`` runs (JSON friendly)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts, ends = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, rows.size - 1]] + 1
    return [[int(a), int(b)] for a, b in zip(starts, ends)]


@dataclass
class CollectedStatistics:
    """Sufficient statistics of training rows and of held-out (validation) rows.

    ``settings`` holds the collection's identity (:mod:`captum_coar.coar._identity`),
    ``n_validation`` and the ``rows`` covered as ``[start, stop)`` runs.
    """

    train: SufficientStatistics
    validation: Optional[SufficientStatistics]
    settings: Dict[str, Any] = field(default_factory=dict)

    def merge(self, other: "CollectedStatistics") -> "CollectedStatistics":
        """Add another part's statistics in place (identities checked, rows not counted twice);
        returns self."""
        mine, theirs = "probe" in self.settings, "probe" in other.settings
        if mine or theirs:
            check_same_identity(self.settings, other.settings, "these statistics were made"
                                " differently and cannot be added", "these", "the other",
                                advice="Merge parts of one collection only")
            check_same_identity(self.settings, other.settings, "these statistics were made"
                                " differently and cannot be added", "these", "the other",
                                fields=("n_validation",))
        rows = [rows_of(s.settings["rows"]) for s in (self, other) if "rows" in s.settings]
        if len(rows) == 2:
            twice = np.intersect1d(rows[0], rows[1])
            if twice.size:
                raise ValueError(f"{twice.size} row(s) are in both parts (e.g. row {twice[0]});"
                                 " a part was added twice or the parts overlap")
            self.settings["rows"] = row_ranges(np.union1d(rows[0], rows[1]))
        else:
            self.settings.pop("rows", None)
        self.train.merge(other.train)
        if other.validation is not None:
            if self.validation is None:
                self.validation = other.validation
            else:
                self.validation.merge(other.validation)
        return self


def rows_of(ranges: List[List[int]]) -> np.ndarray:
    """Inverse of :func:`row_ranges`: the rows of ``[start, stop)`` runs."""
    parts = [np.arange(int(a), int(b), dtype=np.int64) for a, b in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
