"""Collected sufficient statistics with the identity of the collection that made them.

Contract
--------
:class:`CollectedStatistics` holds the statistics of training rows and of held-out
(validation) rows, plus ``settings``: the collection's identity
(:mod:`captum_coar.coar._identity`), ``n_validation`` and the ``rows`` covered as
``[start, stop)`` runs (:func:`row_ranges`). :meth:`CollectedStatistics.merge` adds another
part in place after checking that both carry the same identity (a field missing on one side is
a difference) and that no row is counted twice; parts without any identity (built by hand) are
added only to each other. :meth:`CollectedStatistics.check_rows` refuses statistics whose row
count disagrees with the rows they say they cover (e.g. all-reduced twice). Statistics grow
like stores: parts of collections that differ only in ``n_masks`` (rows of one seeded
sequence; none held out) merge into the longer collection's. ``prior`` is the prior
attribution COAR's default fit departs from (a :class:`~captum_coar.coar._prior.PriorReport`,
computed by the estimator's ``collect_statistics`` when its default uses one; None otherwise);
a merge keeps the first part's (every part covers the same examples).
:func:`captum_coar.coar.shards.merge_statistics` is the checked merge of many sources (stores,
files, statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np

from ..solvers._ranges import count_rows, row_ranges, rows_of
from ..solvers.statistics import SufficientStatistics
from ._identity import check_same_identity

if TYPE_CHECKING:
    from ._prior import PriorReport

__all__ = ["CollectedStatistics", "row_ranges", "rows_of"]


@dataclass
class CollectedStatistics:
    """Sufficient statistics of training rows and of held-out (validation) rows.

    ``settings`` holds the collection's identity (:mod:`captum_coar.coar._identity`),
    ``n_validation`` and the ``rows`` covered as ``[start, stop)`` runs.
    """

    train: SufficientStatistics
    validation: Optional[SufficientStatistics]
    settings: Dict[str, Any] = field(default_factory=dict)
    prior: Optional["PriorReport"] = None

    def check_rows(self, label: str = "these statistics") -> None:
        """``ValueError`` unless the counts of the parts equal the number of ``rows`` covered."""
        for part in (self.train, self.validation):
            if part is not None:
                part.check_rows()
        if "rows" not in self.settings:
            return
        count = self.train.count + (self.validation.count if self.validation is not None else 0)
        covered = count_rows(self.settings["rows"])
        if count != covered:
            raise ValueError(
                f"{label} count {count} rows (training and validation) but cover {covered}"
                f" (settings['rows'] = {self.settings['rows'][:4]}"
                f"{' ...' if len(self.settings['rows']) > 4 else ''}): rows were added twice"
                " (e.g. all-reduced twice) or the sums were changed; collect or merge again")

    def merge(self, other: "CollectedStatistics") -> "CollectedStatistics":
        """Add another part's statistics in place (identities checked, rows not counted twice);
        returns self."""
        self.check_rows()
        other.check_rows("the other statistics")
        mine, theirs = "probe" in self.settings, "probe" in other.settings
        grows = _grows(self.settings, other.settings)
        if mine or theirs:
            theirs_as_mine = ({**other.settings, "n_masks": self.settings["n_masks"]} if grows
                              else other.settings)
            check_same_identity(self.settings, theirs_as_mine, "these statistics were made"
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
        if grows:  # rows of a longer collection: the merged statistics are part of it
            self.settings["n_masks"] = max(int(self.settings["n_masks"]),
                                           int(other.settings["n_masks"]))
        if self.prior is None:
            self.prior = other.prior
        if other.validation is not None:
            if self.validation is None:
                self.validation = other.validation
            else:
                self.validation.merge(other.validation)
        return self


def _grows(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether two parts differ in ``n_masks`` only as parts of one growing collection may:
    without held-out rows (those are the last rows of each collection, so they move)."""
    try:
        return (int(a["n_masks"]) != int(b["n_masks"]) and not a.get("n_validation")
                and not b.get("n_validation"))
    except (KeyError, TypeError, ValueError):
        return False
