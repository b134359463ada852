"""Adaptive stopping: collect masks in rounds, refit, stop when the attribution is good enough.

Contract
--------
:class:`StopWhen` is the rule; :func:`run_rounds` is the round loop, given two callables (collect
rows into statistics, fit statistics), so it knows no estimator; :func:`collect_until` runs it
for an estimator (a :class:`~captum_coar.coar.estimator.ComponentAblationRegression`, or any
object with its ``components``, ``collect``, ``collect_statistics`` and ``fit``), through those
public methods. This module does not import the estimator; the estimator imports it.

1. Round 0 collects ``n_validation`` held-out masks (rows ``[max_masks, max_masks +
   n_validation)`` of the same seeded mask sequence, so they never overlap training rows; none
   by default for ``criterion="share"``, which needs none) and the first ``first_masks``
   training rows ``[0, first_masks)``.
2. Every round fits the solver on training rows ``[0, m)`` (the held-out rows are NOT given to
   the solver, so the score below stays held-out) and scores the fit:

   * ``share`` (the default): the predicted share of the large-``m`` held-out correlation the
     fit reaches, from its own error bars: with ``coef = beta - e`` and ``e`` the posterior
     error (uncorrelated with ``coef``, variance ``se^2``), independent masks give
     ``corr(X coef, y) / corr(X beta, y) = sqrt(S / (S + V))``, ``S = ||coef_j||^2``,
     ``V = sum_i se_ji^2``; averaged over examples (needs a solver with standard errors: the
     default's posterior ones are calibrated, see ``benchmarks/README.md``);
   * ``correlation``: the paper's counterfactual correlation on the held-out masks -- per
     example the Pearson correlation between the output and ``intercept + coef . mask`` --
     averaged over examples, computed from the held-out sufficient statistics;
   * ``relative_width``: the mean over examples of ``median_i(2 z se_ij) / rms_i(coef_ij)``
     (the typical 95% interval width relative to the typical attribution; needs a solver with
     standard errors).

3. It stops when ``criterion="share"`` and the predicted share is at least ``share`` (0.95),
   when ``criterion="correlation"`` and the correlation improved by less than ``tol`` since the
   previous round (or is already within ``tol`` of 1, so no round could), or when
   ``criterion="relative_width"`` and the relative width is at most ``tol`` (a solver without
   standard errors is refused for ``share`` and ``relative_width`` before any collection).
   Otherwise the next round grows ``m`` by ``growth`` (capped at ``max_masks``) -- for
   ``share``, to the ``m`` predicted to reach it (``V`` falls as ``1 / m``), between ``1.1 m``
   and ``growth * m`` -- and it stops at the cap.

With a ``store`` (a :class:`~captum_coar.stores.base.MaskOutputStore` or a directory) every
round resumes the same store (``n_masks = max_masks + n_validation``): rows already complete
are not recomputed, so a second call with the same rule re-reads them for free. Without a
store, rounds collect sufficient statistics of their new rows and add them up. The report
(:class:`AdaptiveReport`) says why it stopped, at which ``m``, and the score of every round;
the estimator keeps it in ``COARResult.settings["adaptive"]``.

The solver is chosen and checked once, before any collection, by
:func:`~captum_coar.solvers.checked_solver` for the first round's training masks (``solver=None``:
the one default rule, ``"eb_ridge"`` around attribution patching, computed once before the
first round, unless the first round has more than ``3 N`` masks);
``criterion="relative_width"`` needs ``solver.gives_standard_errors``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch

from .._checks import check_choice, check_float, check_int, fail, fail_type
from ..solvers import Solver, StreamingSolver, checked_solver
from ..solvers.statistics import SufficientStatistics
from ..solvers.uncertainty import normal_quantile
from ..stores.base import MaskOutputStore
from ..stores.memmap import MemmapStore
from ._batches import BatchFn
from ._fingerprint import fingerprints_reused
from ._options import CollectionOptions
from ._prior import with_default_prior
from .result import COARResult

__all__ = ["StopWhen", "AdaptiveReport", "collect_until", "run_rounds", "adaptive_rule",
           "held_out_correlation", "relative_interval_width", "predicted_share",
           "masks_for_share"]

#: ``collect_rows((start, stop), n_masks)``: statistics of mask rows ``[start, stop)`` of a
#: collection of ``n_masks`` rows, collected (or resumed) now.
CollectRows = Callable[[Tuple[int, int], int], SufficientStatistics]
#: ``fit(statistics)``: a :class:`~captum_coar.coar.result.COARResult` fitted on them.
FitRows = Callable[[SufficientStatistics], COARResult]


@dataclass
class StopWhen:
    """When adaptive collection stops (see the module docstring).

    Attributes:
        criterion: ``"share"`` (default: predicted share of the large-``m`` held-out
            correlation at least ``share``), ``"correlation"`` (held-out correlation gain below
            ``tol``) or ``"relative_width"`` (relative 95% interval width at most ``tol``).
        tol: the tolerance of ``correlation`` and ``relative_width`` (default 0.01).
        share: the target of ``criterion="share"`` (default 0.95).
        first_masks: training masks of the first round (default: the number of components N).
        growth: factor by which the training masks grow each round (> 1).
        max_masks: cap on training masks (default 20 N).
        n_validation: held-out masks for the score (default 100, the paper's test masks; 0
            for ``criterion="share"``, which needs none: give some to report a held-out
            correlation too).

    Example:
        >>> import torch
        >>> from captum_coar import ComponentAblationRegression, StopWhen, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet().eval()                       # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> coar = ComponentAblationRegression(model, linear_neurons(model, ["hidden"]))
        >>> attributions = coar.attribute(x, target=y, output="logit", ablation_fraction=0.3,
        ...                               stop_when=StopWhen(tol=0.01, first_masks=14))
        >>> coar.last_result_.settings["adaptive"]["reason"]
        'converged'
        >>> torch.allclose(attributions, model.effects(x, y), atol=1e-3)
        True
    """

    criterion: str = "share"
    tol: float = 0.01
    first_masks: Optional[int] = None
    growth: float = 2.0
    max_masks: Optional[int] = None
    n_validation: Optional[int] = None
    share: float = 0.95

    def resolved(self, n_components: int) -> "StopWhen":
        """A copy with defaults filled in and every field checked."""
        criterion = check_choice("stop_when.criterion", self.criterion,
                                 ("share", "correlation", "relative_width"))
        tol = check_float("stop_when.tol", self.tol, 0.0, low_open=True)
        first = check_int("stop_when.first_masks", self.first_masks, 2, optional=True)
        cap = check_int("stop_when.max_masks", self.max_masks, 2, optional=True)
        growth = check_float("stop_when.growth", self.growth, 1.0, low_open=True)
        n_val = check_int("stop_when.n_validation", self.n_validation,
                          0 if criterion == "share" else 3, optional=True)
        n_val = (0 if criterion == "share" else 100) if n_val is None else n_val
        share = check_float("stop_when.share", self.share, 0.0, 1.0, low_open=True,
                            high_open=True)
        first = n_components if first is None else first
        cap = 20 * n_components if cap is None else cap
        if first > cap:
            raise fail("stop_when.first_masks", f"<= max_masks = {cap}", first)
        assert tol is not None and growth is not None and share is not None
        return StopWhen(criterion, tol, first, growth, cap, n_val, share)


@dataclass
class AdaptiveReport:
    """What adaptive collection did: ``rounds`` (one dict per round: ``n_masks``,
    ``correlation`` (None without held-out masks), ``relative_width``, ``predicted_share``,
    ``seconds``), the ``n_masks`` it stopped at, and
    ``reason`` (``"converged"`` or ``"max_masks"``)."""

    rule: Dict[str, Any]
    rounds: List[Dict[str, Any]] = field(default_factory=list)
    n_masks: int = 0
    n_validation: int = 0
    reason: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def held_out_correlation(validation: SufficientStatistics, coef: torch.Tensor) -> torch.Tensor:
    """Pearson correlation (n,) per example between held-out outputs and ``coef . mask``.

    Examples whose held-out outputs or predictions do not vary get 0.
    """
    sxx, sxy, syy = validation.centered()
    w = coef.to(sxx).T  # (N, n)
    cov = (w * sxy).sum(0)
    var_p = ((sxx @ w) * w).sum(0).clamp_min(0.0)
    den = (var_p * syy).sqrt()
    return torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(den))


def predicted_share(coef: torch.Tensor, standard_errors: torch.Tensor) -> torch.Tensor:
    """``sqrt(S / (S + V))`` per example (see the module docstring), ``(n,)``."""
    S = (coef.double() ** 2).sum(1)
    V = (standard_errors.double() ** 2).sum(1)
    return torch.where(S + V > 0, (S / (S + V).clamp_min(1e-300)).sqrt(), torch.ones_like(S))


def masks_for_share(m: int, coef: torch.Tensor, standard_errors: torch.Tensor,
                    target: float) -> float:
    """The ``m'`` at which the mean predicted share reaches ``target`` if ``V`` falls as
    ``1 / m`` (bisection; ``inf`` when no finite ``m'`` does)."""
    S = (coef.double() ** 2).sum(1)
    ratio = (standard_errors.double() ** 2).sum(1) / S.clamp_min(1e-300)  # V / S at m

    def mean_share(masks: float) -> float:
        return float((1.0 / (1.0 + ratio * m / masks)).sqrt().mean())

    low, high = float(m), float(m)
    while mean_share(high) < target:
        high *= 2.0
        if high > 1e12 * m:
            return float("inf")
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if mean_share(middle) < target else (low, middle)
    return high


def relative_interval_width(coef: torch.Tensor, standard_errors: torch.Tensor,
                            level: float = 0.95) -> float:
    """Mean over examples of ``median_i(2 z se_ij) / rms_i(coef_ij)``."""
    width = 2.0 * normal_quantile(level) * standard_errors.median(dim=1).values
    scale = coef.pow(2).mean(dim=1).sqrt()
    rel = torch.where(scale > 0, width / scale.clamp_min(1e-300),
                      torch.full_like(scale, float("inf")))
    return float(rel.mean())


def adaptive_rule(n_masks: Any, stop_when: Any, validation_fraction: float) -> StopWhen:
    """The rule of ``attribute(n_masks="auto" | None, stop_when=...)``, arguments checked."""
    if n_masks not in (None, "auto"):
        raise fail("n_masks", "None or 'auto' when stop_when is given", n_masks)
    if validation_fraction:
        raise fail("validation_fraction", "0 in adaptive mode (the held-out masks are"
                   " stop_when.n_validation)", validation_fraction)
    if stop_when is None:
        return StopWhen()
    if not isinstance(stop_when, StopWhen):
        raise fail_type("stop_when", "a StopWhen or None", stop_when)
    return stop_when


def collect_until(estimator: Any, data: Iterable[Any], rule: StopWhen,
                  solver: Union[str, Solver, StreamingSolver, None] = None,
                  store: Union[MaskOutputStore, str, None] = None, *,
                  ablation_fraction: Optional[float] = None, sampler: Any = "bernoulli",
                  output: Any = None, seed: int = 0, ablation: Any = None,
                  perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
                  chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
                  show_progress: Optional[bool] = None,
                  options: Optional[CollectionOptions] = None
                  ) -> Tuple[COARResult, AdaptiveReport]:
    """Collect in rounds until ``rule`` says stop; returns the last fit and the report.

    Args:
        estimator: the :class:`~captum_coar.coar.estimator.ComponentAblationRegression` whose
            ``collect`` (with a ``store``) or ``collect_statistics`` (without) collects each
            round's rows and whose ``fit`` fits them.
        solver: fits every round (None: the default rule for the first round's masks); a
            solver that fits from sufficient statistics.
        store: a store or directory that every round resumes (None: statistics only).

    The other arguments go to ``collect`` / ``collect_statistics`` as they are; ``n_masks``,
    ``rows`` and ``validation_fraction`` are set by the rule.
    """
    N = estimator.components.n_components
    rule = rule.resolved(N)
    assert rule.max_masks is not None and rule.first_masks is not None
    resolved = checked_solver(solver, rule.first_masks, None, False, N,
                              f"adaptive collection ({rule.first_masks} training masks in the"
                              " first round): ",
                              groups=[g.n_components for g in estimator.components.groups])
    if not isinstance(resolved, Solver):
        raise fail("solver", "a solver that fits from sufficient statistics (least_squares,"
                   " ridge, ridge_auto, lasso...)", resolved)
    if rule.criterion != "correlation" and not resolved.gives_standard_errors:
        raise fail("solver", f"one that gives standard errors for criterion={rule.criterion!r}"
                   " (least_squares, ridge, ridge_auto, eb_ridge)", resolved.name,
                   "Checked before any collection; or use criterion='correlation'")
    if isinstance(store, str):
        store = MemmapStore(store)
    common: Dict[str, Any] = dict(
        ablation_fraction=ablation_fraction, sampler=sampler, output=output, seed=seed,
        ablation=ablation, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
        chunk_rows=chunk_rows, batch_fn=batch_fn, show_progress=show_progress, options=options)

    def collect_rows(rows: Tuple[int, int], total: int) -> SufficientStatistics:
        if store is not None:
            estimator.collect(data, store, n_masks=total, rows=rows, **common)
            return store.statistics(rows)
        return estimator.collect_statistics(data, n_masks=total, rows=rows, prior=False,
                                            **common).train

    resolved, report = with_default_prior(
        solver, resolved, estimator.forward_func, estimator.components,
        estimator.ablation if ablation is None else ablation, data, output,
        batch_fn if batch_fn is not None else getattr(options, "batch_fn", None))
    with fingerprints_reused():  # one call: the model is hashed once, not once per round
        result, rounds = run_rounds(rule, collect_rows,
                                    lambda stats: estimator.fit(stats, solver=resolved))
    if report is not None:
        result.settings["prior"] = report.describe()
    return result, rounds


def run_rounds(rule: StopWhen, collect_rows: CollectRows,
               fit: FitRows) -> Tuple[COARResult, AdaptiveReport]:
    """The round loop of the module docstring for a resolved ``rule`` (see
    :meth:`StopWhen.resolved`): the held-out rows first, then training rows round by round,
    each round fitted with ``fit`` and scored, until the rule stops it."""
    assert rule.max_masks is not None and rule.first_masks is not None
    assert rule.n_validation is not None
    cap, n_val = rule.max_masks, rule.n_validation
    total = cap + n_val
    report = AdaptiveReport(rule=asdict(rule), n_validation=n_val)
    validation = collect_rows((cap, total), total) if n_val else None
    train: Optional[SufficientStatistics] = None
    done, m = 0, rule.first_masks
    previous: Optional[float] = None
    while True:
        tick = time.perf_counter()
        part = collect_rows((done, m), total)
        train = part if train is None else train.merge(part)
        done = m
        result = fit(train)
        coef, se = result.fit.coef, result.fit.standard_errors
        corr = (None if validation is None else
                float(held_out_correlation(validation, coef).mean()))
        width = None if se is None else relative_interval_width(coef, se)
        share = None if se is None else float(predicted_share(coef, se).mean())
        report.rounds.append({"n_masks": m, "correlation": corr, "relative_width": width,
                              "predicted_share": share, "seconds": time.perf_counter() - tick})
        following = min(cap, max(m + 1, int(round(m * rule.growth))))
        if rule.criterion == "share":
            if se is None or share is None:  # no residual degree of freedom left
                raise fail("fit", "one with standard errors for criterion='share'",
                           result.fit.solver, "use more masks per round")
            stop = share >= rule.share
            wanted = masks_for_share(m, coef, se, rule.share)
            following = min(cap, max(m + 1, int(round(m * 1.1)),
                                     min(int(round(m * rule.growth)), math.ceil(wanted))))
        elif rule.criterion == "correlation":
            assert corr is not None
            # no round can add more than 1 - corr: stop when even that is below tol
            stop = 1.0 - corr < rule.tol or (previous is not None and corr - previous < rule.tol)
            previous = corr
        else:
            if width is None:  # no residual degree of freedom left for standard errors
                raise fail("fit", "one with standard errors for criterion='relative_width'",
                           result.fit.solver, "use more masks per round or"
                           " criterion='correlation'")
            stop = width <= rule.tol
        if stop or m >= cap:
            report.reason = "converged" if stop else "max_masks"
            break
        m = following
    report.n_masks = done
    result.settings["adaptive"] = report.as_dict()
    result.n_validation = n_val
    return result, report
