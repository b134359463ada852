"""COAR as a Captum attribution: :class:`ComponentAblationRegression` and :class:`COARResult`.

Contract
--------
``ComponentAblationRegression(forward_func, components, ablation="weights")`` is a Captum
``PerturbationAttribution``. ``attribute(inputs, target, ...)`` draws ``n_masks`` keep masks
(True = kept; each component ablated with probability ``ablation_fraction``, or an exact
fraction with ``sampler="fixed"``), evaluates every mask on every example (many masks per
forward pass), and fits for each example a linear model with intercept of the output on the
keep indicators. It returns the coefficients, a tensor ``(batch, n_components)`` (a 1-tuple
holding it when ``inputs`` is a tuple) on the model's device (float64 for a float64 model,
else float32). Positive = the component pushes the output up: the output falls when it is
ablated, Captum's sign convention.

The fitted intercepts, the solver's diagnostics and the settings are kept in
``last_result_`` (a :class:`COARResult`) after every call. Data-set scale work uses the staged
API: :meth:`ComponentAblationRegression.collect` (into an in-memory or memory-mapped store,
resumable), :meth:`~ComponentAblationRegression.collect_statistics` (sufficient statistics
only, memory independent of ``n_masks``) and :meth:`~ComponentAblationRegression.fit`, which
turns either into a :class:`COARResult`.

Solvers (:mod:`captum_coar.solvers`): ``"least_squares"`` (as in the paper's released
configs), ``"ridge"``, ``"lasso"``, ``"ridge_auto"`` (penalty by generalised cross-validation,
or on held-out rows; ``AutoRidge(prior=...)`` shrinks toward any method's attributions),
``"lasso_auto"`` (penalty on held-out rows; ``AutoLasso(prior=...)`` departs from a prior on
few components), ``"eb_ridge"`` (empirical-Bayes ridge around a prior, one prior variance per
component group and example), ``"streaming"`` (needs raw data: a store) or an instance. The
default (``solver=None``, in ``attribute``, ``fit`` and adaptive collection alike) is ONE rule,
:func:`captum_coar.solvers.default_solver`: least squares when there are more than ``3 N``
training masks, and at or below that :class:`~captum_coar.solvers.EmpiricalBayesRidge` with
the estimator's component groups, around attribution patching computed on the same examples
with the same ablation and output (its cost, in forward equivalents, is in
``last_result_.settings["prior"]``; see :mod:`captum_coar.coar._prior`). ``attribute``,
``collect_statistics`` and the adaptive path compute that prior; a store holds none, so ``fit``
on a store departs from 0 unless given ``prior=``. It is more accurate than least squares and
ridge below ``3 N`` and its error bars still cover (``benchmarks/README.md``, "Fewer masks").
Every path resolves and checks the solver through
:func:`captum_coar.solvers.checked_solver` (the solver's own ``check``: no data, no trial
fit), so ``attribute`` refuses a solver before any forward pass. With
``validation_fraction > 0`` the last rows are held out; solvers that choose a penalty use them,
and every result reports the held-out mean squared error.

How collections run (masks per pass, row budget, chunking, batch function, statistics dtype,
progress) is one :class:`~captum_coar.coar._options.CollectionOptions`, carried by the
estimator (``options=`` in the constructor) and passed down unchanged; every method also takes
``options=`` and the older keywords of the same names. The identity of the data is computed
once per call: ``attribute`` fits what it has just collected without recomputing it, and
``fit`` computes the estimator's side once to compare with the data's record.

Error bars: least squares, ridge, ``ridge_auto`` and ``eb_ridge`` give standard errors
(``COARResult.standard_errors``) and intervals (``COARResult.confidence_interval(level)``),
with respect to the coefficients COAR converges to as ``n_masks`` grows (with Bernoulli masks,
component ``i``'s is ``E[y | i kept] - E[y | i ablated]``). Least squares' measure the sampling
noise of the masks; ridge's leave out the penalty's bias; the default's (``eb_ridge``) are
posterior standard deviations that include the shrinkage as its fitted prior expects it, so
its 95% intervals cover about 95% of components on average (see
:mod:`captum_coar.solvers.uncertainty`).

``attribute(..., n_masks="auto")`` (or ``stop_when=StopWhen(...)``) collects in rounds and
stops when the fit's error bars predict 95% of the large-``m`` held-out correlation (or, on
request, when the held-out correlation stops improving; :mod:`captum_coar.coar.adaptive`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from .._checks import check_positive_int
from .._inputs import TensorOrTuple, as_tuple, input_tuple
from .._modules import model_device, result_dtype
from .._pairing import check_default_ablation, paired_baselines
from .._preflight import preflight
from .._state import keeps_model_state
from ..ablation import AblationStrategy
from ..components import ComponentSet, check_example_positions
from ..outputs import OutputFunction
from ..sampling import MaskSampler
from ..solvers import FitResult, Solver, StreamingSolver, checked_solver, default_solver
from ..solvers.base import note_constant_columns
from ..solvers.statistics import SufficientStatistics
from ..stores.base import MaskOutputStore, RowSelection
from ..stores.memmap import MemmapStore
from ..stores.memory import InMemoryStore
from . import collection
from ._budget import warn_large_default
from ._entry_points import CollectionEntryPoints
from ._identity import check_estimator_identity, identity_of
from ._options import CollectionOptions, resolve_options
from ._prior import PriorReport, given_prior, with_default_prior
from ._settings import default_n_masks, stats_device, validation_split
from .adaptive import StopWhen, adaptive_rule, collect_until
from .collection import CollectedStatistics, tensor_batches
from .result import COARResult

__all__ = ["ComponentAblationRegression", "COARResult"]

SolverLike = Union[str, Solver, StreamingSolver]
OutputLike = Union[None, str, OutputFunction, Callable[..., Tensor]]
Source = Union[MaskOutputStore, str, CollectedStatistics, SufficientStatistics]


class ComponentAblationRegression(PerturbationAttribution, CollectionEntryPoints):
    """Component attribution via regression (COAR; Shah, Ilyas & Madry, 2024).

    Args:
        forward_func: the model, or a function of ``(*inputs, *additional_forward_args)``
            that runs ``components.model``.
        components: the components to attribute to (their model carries the gate hooks).
        ablation: what an ablated component becomes: ``"weights"`` (its weights zeroed, as in
            the reference code; default), ``"zero"`` or an
            :class:`~captum_coar.ablation.AblationStrategy`.
        options: how its collections run, a
            :class:`~captum_coar.coar._options.CollectionOptions` (default: its defaults);
            a method's ``options=`` or keywords of the same names override it for one call.

    Attributes:
        last_result_: the :class:`COARResult` of the last ``attribute`` or ``fit`` call.

    Example:
        >>> import torch
        >>> from captum_coar import ComponentAblationRegression, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> coar = ComponentAblationRegression(model, linear_neurons(model, names=["hidden"]))
        >>> attributions = coar.attribute(x, target=y, output="logit", n_masks=60,
        ...                               ablation_fraction=0.3)
        >>> attributions.shape, torch.allclose(attributions, model.effects(x, y), atol=1e-4)
        (torch.Size([4, 7]), True)
    """

    def __init__(self, forward_func: Callable[..., Any], components: ComponentSet,
                 ablation: Union[str, AblationStrategy] = "weights",
                 options: Optional[CollectionOptions] = None) -> None:
        PerturbationAttribution.__init__(self, forward_func)
        self.components = components
        self.ablation = ablation
        self.options = resolve_options(options)
        self.last_result_: Optional[COARResult] = None

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    # ------------------------------------------------------------------ one batch
    @log_usage()
    @keeps_model_state
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        n_masks: Union[int, str, None] = None,
        ablation_fraction: Optional[float] = None,
        output: OutputLike = None,
        solver: Optional[SolverLike] = None,
        sampler: Union[str, MaskSampler] = "bernoulli",
        seed: int = 0,
        validation_fraction: float = 0.0,
        perturbations_per_eval: Optional[int] = None,
        max_rows: Optional[int] = None,
        show_progress: Optional[bool] = None,
        stop_when: Optional[StopWhen] = None,
        baselines: Any = None,
        options: Optional[CollectionOptions] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        """COAR attributions ``(batch, n_components)`` for the examples of ``inputs``.

        Args:
            inputs: a tensor or tuple of tensors, batch on dim 0.
            target: class index per example (int, sequence or tensor), or token ids for
                ``output="sequence_margin"``; needed by every output except ``"logit"`` of a
                one-output model and callables.
            additional_forward_args: extra forward arguments (rows repeated with the inputs).
            n_masks: number of ablations ``m`` (default ``10 * n_components``); least squares
                needs more training masks than components. ``"auto"``: collect in rounds and
                stop adaptively with the default :class:`~captum_coar.coar.adaptive.StopWhen`
                (when the fit's error bars predict 95% of the large-``m`` held-out
                correlation; from N up to 20 N masks, no held-out masks).
            ablation_fraction: probability ``alpha`` in (0, 1) that a component is ablated
                (default 0.05; a sampler object carries its own, and a different value here
                is an error).
            output: ``"margin"`` (default with a target), ``"logit"`` (default without),
                ``"log_prob"``, ``"loss"``, ``"sequence_margin"`` or a callable
                ``(model_output, target) -> (batch,)``.
            solver: ``"least_squares"``, ``"ridge"``, ``"lasso"``, ``"ridge_auto"``,
                ``"lasso_auto"``, ``"streaming"`` or an instance (``AutoRidge(prior=...)``
                shrinks toward a prior attribution; ``AutoLasso(prior=...)``, which needs
                ``validation_fraction > 0``, departs from it on few components). None: the
                default rule, least squares above ``3 N`` training masks, otherwise
                ``eb_ridge`` around attribution patching (computed here, one forward and one
                backward pass per example; in adaptive mode the rule is applied to the first
                round's masks). Checked before any forward pass.
            sampler: ``"bernoulli"`` (independent ablations, the paper's), ``"fixed"`` (exactly
                ``round(alpha * N)`` ablated per mask) or a MaskSampler.
            seed: masks depend only on ``(seed, row)``.
            validation_fraction: share of mask rows held out (for choosing alpha, and for the
                held-out mse in ``last_result_.diagnostics``).
            perturbations_per_eval, max_rows, show_progress: how the collection runs, as in
                :class:`~captum_coar.coar._options.CollectionOptions` (masks per forward pass,
                default ``max_rows // batch``; the row budget of a pass, default 128 rows on
                a CPU and 4096 on an accelerator; a tqdm bar). None: from ``options``.
            stop_when: a :class:`~captum_coar.coar.adaptive.StopWhen` rule: adaptive
                collection (``n_masks`` must then be None or ``"auto"``); the report is in
                ``last_result_.settings["adaptive"]``.
            baselines: paired reference inputs shaped like ``inputs`` (Captum's meaning): each
                mask chooses which components take their activation on the paired baseline
                example (activation patching; the baseline activations are recorded once per
                call). The coefficient of ``c`` then estimates ``E[F | c kept] - E[F | c
                patched]``; the collection's identity covers the baselines.
            options: a :class:`~captum_coar.coar._options.CollectionOptions` for this call
                (default: the estimator's); its ``batch_fn`` is not used, since ``attribute``
                makes its batches from ``inputs``.

        Returns:
            Tensor ``(batch, n_components)``, or the 1-tuple ``(tensor,)`` when ``inputs`` is a
            tuple (Captum's tuple-in, tuple-out convention, which ``captum.metrics`` rely on);
            ``self.last_result_`` holds the full result.
        """
        # empty batch, non-finite inputs, random modules in training mode; the collection
        # runs the probe (targets, determinism, outputs) before its first gated pass
        preflight("ComponentAblationRegression", self.forward_func, self.components, inputs,
                  baselines=baselines, probe=False)
        if baselines is not None:  # checked here, before the collection's first pass
            check_default_ablation(self.ablation)
            paired_baselines(input_tuple(inputs), baselines, self.forward_func)
        # paired batches when baselines are given: the collection patches from them
        data = tensor_batches(inputs, target, additional_forward_args, baselines=baselines)
        n_examples = int(input_tuple(inputs)[0].shape[0])
        check_example_positions(self.components, n_examples)
        run = replace(resolve_options(options, self.options,
                                      perturbations_per_eval=perturbations_per_eval,
                                      max_rows=max_rows, show_progress=show_progress),
                      batch_fn=None)
        common: Dict[str, Any] = dict(ablation_fraction=ablation_fraction, sampler=sampler,
                                      output=output, seed=seed, options=run)
        N = self.components.n_components
        if n_masks == "auto" or stop_when is not None:  # adaptive: rounds until the rule stops
            rule = adaptive_rule(n_masks, stop_when, validation_fraction).resolved(N)
            assert rule.first_masks is not None
            resolved = checked_solver(solver, rule.first_masks, n_examples, False, N,
                                      f"adaptive collection ({rule.first_masks} training masks"
                                      " in the first round), checked before collection: ",
                                      groups=self._groups())
            resolved, report = self._prior(solver, resolved, data, output)
            result, _ = collect_until(self, data, rule, resolved, **common)
            self._record_prior(result, report)
            return (result.attributions,) if isinstance(inputs, tuple) else result.attributions
        if isinstance(n_masks, str):
            raise ValueError(f"`n_masks` must be an integer, None or 'auto'; got {n_masks!r}")
        given, n_masks = n_masks, check_positive_int("n_masks", default_n_masks(n_masks, N))
        n_val = validation_split(n_masks, validation_fraction)
        resolved = checked_solver(solver, n_masks - n_val, n_examples, n_val > 0, N,
                                  f"n_masks={n_masks} ({n_masks - n_val} for training), checked"
                                  " before collection: ", groups=self._groups())
        warn_large_default(given, N, n_masks, n_examples, self.forward_func,
                           input_tuple(inputs), as_tuple(additional_forward_args))
        source: Source
        if isinstance(resolved, StreamingSolver):
            source = collection.collect(self.forward_func, self.components, data, InMemoryStore(),
                                        n_masks=n_masks, ablation=self.ablation, **common)
        else:
            source = collection.collect_statistics(
                self.forward_func, self.components, data, n_masks=n_masks,
                ablation=self.ablation, validation_fraction=validation_fraction, **common)
            validation_fraction = 0.0  # the statistics carry their split
        resolved, report = self._prior(solver, resolved, data, output)  # after: errors there first
        # the identity was built by this collection, from this estimator's model: not redone
        result = self._fit(source, resolved, validation_fraction, None, identity_checked=True)
        self._record_prior(result, report)
        # Captum's convention, tuple in -> tuple out (captum.metrics rely on it)
        return (result.attributions,) if isinstance(inputs, tuple) else result.attributions

    def default_solver(self, n_train: int) -> str:
        """The solver ``solver=None`` means for ``n_train`` training masks
        (:func:`captum_coar.solvers.default_solver`): least squares above ``3 N``,
        ``"eb_ridge"`` at or below (where it is measured to do better)."""
        return default_solver(n_train, self.components.n_components)

    def _groups(self) -> list:
        """Sizes of the component groups (one prior variance each in the default fit)."""
        return [group.n_components for group in self.components.groups]

    def _prior(self, solver: Optional[SolverLike], resolved: Any, data: Any,
               output: OutputLike, batch_fn: Any = None) -> Tuple[Any, Optional[PriorReport]]:
        """The default solver with its prior (attribution patching on ``data``), else as is."""
        return with_default_prior(solver, resolved, self.forward_func, self.components,
                                  self.ablation, data, output, batch_fn)

    @staticmethod
    def _record_prior(result: COARResult, report: Optional[PriorReport]) -> None:
        if report is not None:
            result.settings["prior"] = report.describe()

    # ------------------------------------------------------------------ staged API
    def fit(self, source: Source, solver: Optional[SolverLike] = None,
            validation_fraction: float = 0.0, rows: RowSelection = None,
            prior: Optional[Tensor] = None) -> COARResult:
        """Fit COAR from a store (or its directory), collected statistics or plain statistics.

        For a store, the last ``validation_fraction`` of the selected ``rows`` (all complete
        rows are required) are held out. Collected statistics carry their own split.
        ``solver=None`` is the default rule for the training rows fitted (least squares above
        ``3 N``, ``"eb_ridge"`` at or below); ``prior`` ``(n_examples, N)`` is what that default
        departs from (None: the prior that ``collect_statistics`` computed for it, else 0; a
        store holds none). The data's recorded identity is compared with this estimator's
        (components, model weights, ablation) first. Sets and returns ``last_result_``.
        """
        if prior is not None:
            prior = torch.as_tensor(prior).detach().to(torch.float64)
        return self._fit(source, solver, validation_fraction, rows, identity_checked=False,
                         prior=prior)

    # ------------------------------------------------------------------ internals
    def _fit(self, source: Source, solver: Optional[SolverLike], validation_fraction: float,
             rows: RowSelection, identity_checked: bool,
             prior: Optional[Tensor] = None) -> COARResult:
        N = self.components.n_components
        report: Optional[PriorReport] = None
        if isinstance(source, (str, MaskOutputStore)):
            store = MemmapStore(source, read_only=True) if isinstance(source, str) else source
            meta = store.metadata
            if not identity_checked:
                check_estimator_identity(self.components, self.ablation, meta, store.location)
            index = store.rows(rows)
            store.check_complete(index)  # names incomplete rows and damaged progress
            n_val = validation_split(len(index), validation_fraction)
            train_rows, val_rows = index[:len(index) - n_val], index[len(index) - n_val:]
            resolved = checked_solver(solver, len(train_rows), store.n_examples, n_val > 0, N,
                                      f"{store.location}, {len(index)} rows"
                                      f" ({len(train_rows)} for training): ",
                                      groups=self._groups())
            resolved = given_prior(solver, resolved, prior)
            device = stats_device(self.components)
            val_stats = store.statistics(val_rows, device=device) if n_val else None
            if isinstance(resolved, StreamingSolver):
                fit = resolved.fit(lambda: store.iter_chunks(train_rows), val_stats)
            else:
                stats = store.statistics(train_rows, device=device)
                fit = resolved.fit(stats, val_stats)
                note_constant_columns(fit, stats)
            n_train, settings = len(train_rows), identity_of(meta)
        else:
            if isinstance(source, SufficientStatistics):
                source = CollectedStatistics(source, None)
            if not isinstance(source, CollectedStatistics):
                raise TypeError(
                    "fit needs a MaskOutputStore, a store path, CollectedStatistics or"
                    f" SufficientStatistics; got {type(source).__name__}")
            if validation_fraction:
                raise ValueError("validation rows of statistics are chosen at collection; pass"
                                 " validation_fraction to collect_statistics instead")
            if source.settings and not identity_checked:  # bare statistics carry no identity
                check_estimator_identity(self.components, self.ablation, source.settings,
                                         "the statistics")
            train, validation = source.train, source.validation
            resolved = checked_solver(solver, train.count, train.n_outputs,
                                      validation is not None, N,
                                      f"statistics of {train.count} training masks: ",
                                      groups=self._groups())
            if prior is None and source.prior is not None:
                report, prior = source.prior, source.prior.prior
            resolved = given_prior(solver, resolved, prior)
            if isinstance(resolved, StreamingSolver):
                raise ValueError(
                    f"solver {resolved.name!r} streams raw (masks, outputs) chunks, which"
                    " statistics do not keep; collect into a store, or use least_squares, ridge"
                    " or lasso")
            fit = resolved.fit(train, validation)
            note_constant_columns(fit, train)
            n_train, n_val = train.count, 0 if validation is None else validation.count
            settings = dict(source.settings)
        settings["solver"] = resolved.describe()
        result = self._result(fit, n_train, n_val, settings)
        self._record_prior(result, report)
        self.last_result_ = result
        return result

    def _result(self, fit: FitResult, n_train: int, n_val: int,
                settings: Dict[str, Any]) -> COARResult:
        device, dtype = model_device(self.components.model), result_dtype(self.components.model)
        return COARResult(
            attributions=fit.coef.to(device=device, dtype=dtype),
            intercept=fit.intercept.to(device=device, dtype=dtype),
            fit=fit, components=self.components, n_masks=n_train, n_validation=n_val,
            settings=settings)
