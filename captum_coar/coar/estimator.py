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
few components), ``"streaming"`` (needs raw data: a store) or an instance. The default
(``solver=None``) is least squares when there are more than ``2 N`` training masks and
``ridge_auto`` otherwise (least squares is undefined at ``m <= N`` and noisier than the
chosen ridge up to about ``2 N``; see ``benchmarks/README.md``, "Fewer masks"). With ``validation_fraction > 0`` the last rows are
held out; solvers that choose a penalty use them, and every result reports the held-out mean
squared error.

Error bars: least squares, ridge and ``ridge_auto`` give standard errors
(``COARResult.standard_errors``) and intervals (``COARResult.confidence_interval(level)``).
They measure the sampling noise of the finite set of random masks, with respect to the
coefficients COAR converges to as ``n_masks`` grows (with Bernoulli masks, component ``i``'s
is ``E[y | i kept] - E[y | i ablated]``); a penalty's bias is not included (see
:mod:`captum_coar.solvers.uncertainty`).

``attribute(..., n_masks="auto")`` (or ``stop_when=StopWhen(...)``) collects in rounds and
stops when the held-out correlation stops improving (:mod:`captum_coar.coar.adaptive`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import torch
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from .._checks import check_positive_int
from .._inputs import TensorOrTuple, input_tuple
from .._pairing import check_default_ablation, paired_baselines
from .._preflight import preflight
from .._state import keeps_model_state
from ..ablation import AblationStrategy, PatchAblation, resolve_ablation
from ..components import ComponentSet, check_example_positions, model_device, result_dtype
from ..outputs import OutputFunction
from ..sampling import MaskSampler
from ..solvers import FitResult, LeastSquares, Solver, StreamingSolver, resolve_solver
from ..solvers.selection import check_prior
from ..solvers.statistics import SufficientStatistics
from ..stores.base import MaskOutputStore, RowSelection
from ..stores.memmap import MemmapStore
from ..stores.memory import InMemoryStore
from ._entry_points import CollectionEntryPoints
from ._fingerprint import model_fingerprint
from ._identity import ESTIMATOR_FIELDS, check_same_identity, describe_ablation
from ._settings import check_solver_arguments
from .adaptive import StopWhen, adaptive_rule, collect_until
from .collection import (
    CollectedStatistics,
    collect,
    collect_statistics,
    stats_device,
    tensor_batches,
    validation_split,
)
from .result import COARResult

__all__ = ["ComponentAblationRegression", "COARResult"]

SolverLike = Union[str, Solver, StreamingSolver]
OutputLike = Union[None, str, OutputFunction, Callable[..., Tensor]]


class ComponentAblationRegression(PerturbationAttribution, CollectionEntryPoints):
    """Component attribution via regression (COAR; Shah, Ilyas & Madry, 2024).

    Args:
        forward_func: the model, or a function of ``(*inputs, *additional_forward_args)``
            that runs ``components.model``.
        components: the components to attribute to (their model carries the gate hooks).
        ablation: what an ablated component becomes: ``"weights"`` (its weights zeroed, as in
            the reference code; default), ``"zero"`` or an
            :class:`~captum_coar.ablation.AblationStrategy`.

    Attributes:
        last_result_: the :class:`COARResult` of the last ``attribute`` or ``fit`` call.
    """

    def __init__(self, forward_func: Callable[..., Any], components: ComponentSet,
                 ablation: Union[str, AblationStrategy] = "weights") -> None:
        PerturbationAttribution.__init__(self, forward_func)
        self.components = components
        self.ablation = ablation
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
        show_progress: bool = False,
        stop_when: Optional[StopWhen] = None,
        baselines: Any = None,
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
                (held-out correlation gain below 0.01, from N up to 20 N masks, plus 100
                held-out masks).
            ablation_fraction: probability ``alpha`` in (0, 1) that a component is ablated
                (default 0.05; a sampler object carries its own, and a different value here
                is an error).
            output: ``"margin"`` (default with a target), ``"logit"`` (default without),
                ``"log_prob"``, ``"loss"``, ``"sequence_margin"`` or a callable
                ``(model_output, target) -> (batch,)``.
            solver: ``"least_squares"``, ``"ridge"``, ``"lasso"``, ``"ridge_auto"``,
                ``"lasso_auto"``, ``"streaming"`` or an instance (``AutoRidge(prior=...)``
                shrinks toward a prior attribution; ``AutoLasso(prior=...)``, which needs
                ``validation_fraction > 0``, departs from it on few components). None:
                least squares above ``2 N`` training masks, ``ridge_auto`` otherwise (and
                always in adaptive mode).
            sampler: ``"bernoulli"`` (independent ablations, the paper's), ``"fixed"`` (exactly
                ``round(alpha * N)`` ablated per mask) or a MaskSampler.
            seed: masks depend only on ``(seed, row)``.
            validation_fraction: share of mask rows held out (for choosing alpha, and for the
                held-out mse in ``last_result_.diagnostics``).
            perturbations_per_eval: masks per forward pass (default ``max_rows // batch``).
            max_rows: forward-pass row budget used when ``perturbations_per_eval`` is None
                (default: 128 rows on a CPU, 4096 on an accelerator; see engine.default_max_rows).
            show_progress: show a tqdm bar.
            stop_when: a :class:`~captum_coar.coar.adaptive.StopWhen` rule: adaptive
                collection (``n_masks`` must then be None or ``"auto"``); the report is in
                ``last_result_.settings["adaptive"]``.
            baselines: paired reference inputs shaped like ``inputs`` (Captum's meaning): each
                mask chooses which components take their activation on the paired baseline
                example (activation patching; the baseline activations are recorded once per
                call). The coefficient of ``c`` then estimates ``E[F | c kept] - E[F | c
                patched]``; the collection's identity covers the baselines.

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
        ablation = self.ablation
        N = self.components.n_components
        if n_masks == "auto" or stop_when is not None:  # adaptive: rounds until the rule stops
            rule = adaptive_rule(n_masks, stop_when, validation_fraction)
            solver = "ridge_auto" if solver is None else solver
            check_prior(solver, n_examples, N)
            resolved = self._prepare(rule.resolved(N).first_masks or 2, solver, 0.0)
            result, _ = collect_until(self, data, rule, resolved, ablation_fraction=ablation_fraction,
                                      sampler=sampler, output=output, seed=seed,
                                      ablation=ablation,
                                      perturbations_per_eval=perturbations_per_eval,
                                      max_rows=max_rows, show_progress=show_progress)
            return (result.attributions,) if isinstance(inputs, tuple) else result.attributions
        if isinstance(n_masks, str):
            raise ValueError(f"`n_masks` must be an integer, None or 'auto'; got {n_masks!r}")
        n_masks = self._default_n_masks(n_masks)
        if solver is None:
            solver = self.default_solver(n_masks - validation_split(n_masks, validation_fraction))
        check_prior(solver, n_examples, N)
        resolved = self._prepare(n_masks, solver, validation_fraction)
        common: Dict[str, Any] = dict(
            n_masks=n_masks, ablation_fraction=ablation_fraction, sampler=sampler,
            ablation=ablation, output=output, seed=seed,
            perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            show_progress=show_progress)
        if isinstance(resolved, StreamingSolver):
            store = collect(self.forward_func, self.components, data, InMemoryStore(), **common)
            result = self.fit(store, solver=resolved, validation_fraction=validation_fraction)
        else:
            stats = collect_statistics(self.forward_func, self.components, data,
                                       validation_fraction=validation_fraction, **common)
            result = self.fit(stats, solver=resolved)
        # Captum's convention, tuple in -> tuple out (captum.metrics rely on it)
        return (result.attributions,) if isinstance(inputs, tuple) else result.attributions

    def default_solver(self, n_train: int) -> str:
        """The solver ``solver=None`` means for ``n_train`` training masks: least squares
        above ``2 N``, ``"ridge_auto"`` at or below (where it is measured to do better)."""
        return "least_squares" if n_train > 2 * self.components.n_components else "ridge_auto"

    # ------------------------------------------------------------------ staged API
    def collect(self, data: Iterable[Any], store: Union[MaskOutputStore, str, None] = None, *,
                n_masks: Optional[int] = None, **kwargs: Any) -> MaskOutputStore:
        """Collect masks and outputs over ``data`` into ``store`` (see
        :func:`captum_coar.coar.collection.collect`); resumes when the store holds partial data."""
        kwargs.setdefault("ablation", self.ablation)
        return collect(self.forward_func, self.components, data, store,
                       n_masks=self._default_n_masks(n_masks), **kwargs)

    def collect_statistics(self, data: Iterable[Any], *, n_masks: Optional[int] = None,
                           **kwargs: Any) -> CollectedStatistics:
        """Sufficient statistics over ``data`` without raw storage (see
        :func:`captum_coar.coar.collection.collect_statistics`)."""
        kwargs.setdefault("ablation", self.ablation)
        return collect_statistics(self.forward_func, self.components, data,
                                  n_masks=self._default_n_masks(n_masks), **kwargs)

    def fit(self, source: Union[MaskOutputStore, str, CollectedStatistics, SufficientStatistics],
            solver: SolverLike = "least_squares", validation_fraction: float = 0.0,
            rows: RowSelection = None) -> COARResult:
        """Fit COAR from a store (or its directory), collected statistics or plain statistics.

        For a store, the last ``validation_fraction`` of the selected ``rows`` (all complete
        rows are required) are held out. Collected statistics carry their own split.
        Sets and returns ``last_result_``.
        """
        resolved = resolve_solver(solver)
        settings: Dict[str, Any] = {}
        if isinstance(source, (str, MaskOutputStore)):
            store = MemmapStore(source, read_only=True) if isinstance(source, str) else source
            meta = store.metadata
            self._check_identity(meta, store.location)
            fit, n_train, n_val = self._fit_store(store, resolved, validation_fraction, rows)
            settings = {k: meta.get(k) for k in ("seed", "sampler", "ablation", "output",
                                                 "model_fingerprint", "components_fingerprint")}
        else:
            if isinstance(source, SufficientStatistics):
                source = CollectedStatistics(source, None)
            if not isinstance(source, CollectedStatistics):
                raise TypeError(
                    "fit needs a MaskOutputStore, a store path, CollectedStatistics or"
                    f" SufficientStatistics; got {type(source).__name__}")
            if isinstance(resolved, StreamingSolver):
                raise ValueError(
                    f"solver {resolved.name!r} streams raw (masks, outputs) chunks, which"
                    " statistics do not keep; collect into a store, or use least_squares, ridge"
                    " or lasso")
            if validation_fraction:
                raise ValueError("validation rows of statistics are chosen at collection; pass"
                                 " validation_fraction to collect_statistics instead")
            if source.settings:  # bare statistics carry no identity to check
                self._check_identity(source.settings, "the statistics")
            self._check_enough_masks(resolved, source.train.count, source.train.count)
            fit = resolved.fit(source.train, source.validation)
            _note_constant_columns(fit, source.train)
            n_train = source.train.count
            n_val = 0 if source.validation is None else source.validation.count
            settings = dict(source.settings)
        settings["solver"] = resolved.describe()
        result = self._result(fit, n_train, n_val, settings)
        self.last_result_ = result
        return result

    # ------------------------------------------------------------------ internals
    def _default_n_masks(self, n_masks: Optional[int]) -> int:
        return 10 * self.components.n_components if n_masks is None else n_masks

    def _check_identity(self, record: Dict[str, Any], where: str) -> None:
        """Refuse data collected for other components, model weights or ablation."""
        ablation = describe_ablation(resolve_ablation(self.ablation))
        recorded = record.get("ablation")
        if isinstance(recorded, dict) and recorded.get("name") == PatchAblation.name:
            # collected with baselines=: the patch (and its baselines' fingerprint) is the
            # data's; an estimator with the default ablation fits it
            check_default_ablation(self.ablation)
            ablation = recorded
        mine = {"n_components": self.components.n_components,
                "components_fingerprint": self.components.fingerprint,
                "model_fingerprint": model_fingerprint(self.components.model),
                "ablation": ablation}
        check_same_identity(mine, record, f"{where} was collected differently from this"
                            " estimator", "estimator", "data", fields=ESTIMATOR_FIELDS,
                            advice="Fit with the model, components and ablation the data was"
                            " collected with")

    def _prepare(self, n_masks: int, solver: SolverLike,
                 validation_fraction: float) -> Union[Solver, StreamingSolver]:
        """Check the solver against the mask count before any forward pass; return it resolved.

        The collection settings are resolved and checked once, by ``collect`` /
        ``collect_statistics``, also before any forward pass."""
        n_masks = check_positive_int("n_masks", n_masks)
        resolved = resolve_solver(solver)
        n_val = validation_split(n_masks, validation_fraction)
        self._check_enough_masks(resolved, n_masks - n_val, n_masks)
        if isinstance(resolved, Solver):
            check_solver_arguments(resolved, with_validation=n_val > 0)
        return resolved

    def _check_enough_masks(self, solver: Any, n_train: int, n_masks: int) -> None:
        N = self.components.n_components
        if isinstance(solver, LeastSquares) and n_train <= N:
            raise ValueError(
                f"n_masks={n_masks} ({n_train} for training) is too small for least squares with"
                f" {N} components: it needs more training masks than components (at least"
                f" {N + 1}; in practice 10x, e.g. n_masks={10 * N}), or use solver='ridge'")
        if n_train < 2:
            raise ValueError(f"n_masks={n_masks} leaves {n_train} training masks; any solver"
                             " needs at least 2")

    def _fit_store(self, store: MaskOutputStore, solver: Union[Solver, StreamingSolver],
                   validation_fraction: float, rows: RowSelection) -> Any:
        index = store.rows(rows)
        store.check_complete(index)  # names incomplete rows and damaged progress
        n_val = validation_split(len(index), validation_fraction)
        train_rows, val_rows = index[:len(index) - n_val], index[len(index) - n_val:]
        self._check_enough_masks(solver, len(train_rows), len(index))
        device = stats_device(self.components)
        val_stats = store.statistics(val_rows, device=device) if n_val else None
        if isinstance(solver, StreamingSolver):
            fit = solver.fit(lambda: store.iter_chunks(train_rows), val_stats)
        else:
            stats = store.statistics(train_rows, device=device)
            fit = solver.fit(stats, val_stats)
            _note_constant_columns(fit, stats)
        return fit, len(train_rows), n_val

    def _result(self, fit: FitResult, n_train: int, n_val: int,
                settings: Dict[str, Any]) -> COARResult:
        device, dtype = model_device(self.components.model), result_dtype(self.components.model)
        return COARResult(
            attributions=fit.coef.to(device=device, dtype=dtype),
            intercept=fit.intercept.to(device=device, dtype=dtype),
            fit=fit, components=self.components, n_masks=n_train, n_validation=n_val,
            settings=settings)


def _note_constant_columns(fit: FitResult, stats: SufficientStatistics) -> None:
    """Record (and warn about) components never ablated, or always ablated, in the masks."""
    never = torch.nonzero(stats.x_sum >= stats.count).flatten().tolist()
    always = torch.nonzero(stats.x_sum <= 0).flatten().tolist()
    fit.diagnostics["never_ablated"] = never
    fit.diagnostics["always_ablated"] = always
    if never or always:
        warnings.warn(
            f"{len(never)} component(s) were never ablated and {len(always)} always ablated in"
            f" the {stats.count} training masks (e.g. indices {(never + always)[:10]}); their"
            " attributions are not identified (least squares gives them 0 or an arbitrary"
            " share). Use more masks or a larger ablation_fraction.",
            UserWarning, stacklevel=3)
