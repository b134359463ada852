"""Common pieces of the regression solvers: the result object and the two small bases.

Contract
--------
- :class:`Solver`: ``fit(stats, validation_stats=None) -> FitResult`` from
  :class:`~captum_coar.solvers.statistics.SufficientStatistics` (an N x N Gram matrix).
- :class:`StreamingSolver`: ``fit(chunks, validation_stats=None) -> FitResult`` where
  ``chunks`` is a zero-argument callable returning a fresh iterator of ``(X, Y)`` chunks
  (so it can make several passes); memory ``O(N n)``, no Gram matrix.

Both fit a linear model with intercept for all ``n`` outputs (examples) at once,
``Y[:, j] ~ intercept[j] + X @ coef[j]``, penalise ``coef`` only, and return float64
tensors on the statistics' device. When a solver is given several regularisation strengths
and ``validation_stats``, it picks the one with the lowest validation mean squared error,
computed from the validation sufficient statistics, either per example
(``selection="per_example"``, the default: an example's fit does not depend on the other
examples in its batch) or globally (``"global"``: the mean over examples).

Solvers check themselves. Constructors only store arguments; every solver class declares its
arguments' allowed forms in ``_parameter_constraints`` (scikit-learn style, see
:mod:`captum_coar.solvers._constraints`), and :meth:`Solver.check` ``(n_train, n_examples,
with_validation, n_components)`` checks them together with the solver's rules about the data:
at least 2 training masks (least squares: more than ``N``), held-out statistics where the
solver chooses on them, a prior of shape ``(n_examples, N)``. It reads no data and fits
nothing, so the estimator calls it before any forward pass; ``fit`` calls it with the sizes of
the statistics it is given. :attr:`Solver.gives_standard_errors` says whether a fit will carry
standard errors. :func:`note_constant_columns` records (and warns about) components the
masks never or always ablated.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from ._constraints import Choice, Constraint, validate_parameters
from .statistics import SufficientStatistics

__all__ = ["FitResult", "Solver", "StreamingSolver", "ChunkSource", "note_constant_columns"]

#: A zero-argument callable returning a fresh iterable of ``(X, Y)`` chunks per pass.
ChunkSource = Callable[[], Iterable[Tuple[torch.Tensor, torch.Tensor]]]



@dataclass
class FitResult:
    """Coefficients of one linear model per example, plus diagnostics.

    Attributes:
        coef: (n, N) float64, attribution of each component for each example.
        intercept: (n,) float64.
        solver: name of the solver that produced it.
        alpha: regularisation used: a float (one for all examples), an (n,) tensor when chosen
            per example, or None for unregularised least squares.
        train_mse, validation_mse: (n,) mean squared errors on the training / validation rows
            (None when not available).
        alphas: the regularisation path tried (in the order solved; ``(len, n)`` when every
            example has its own path, as the lasso's automatic one per example), or None.
        validation_mse_path: (len(alphas), n) validation mse for every alpha, or None.
        n_iter: iterations (iterative solvers; summed over the path), else None.
        converged: (n,) bool, whether each example met the tolerance (iterative solvers).
        standard_errors: (n, N) standard errors of ``coef`` from the finite sample of masks (see
            :mod:`captum_coar.solvers.uncertainty` for what they mean), or None when the solver
            gives none (lasso) or no residual degree of freedom is left.
        residual_dof: (n,) residual degrees of freedom behind ``standard_errors``, or None.
        diagnostics: solver-specific extras (e.g. the factorisation used).
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    solver: str
    alpha: Optional[Union[float, torch.Tensor]] = None
    train_mse: Optional[torch.Tensor] = None
    validation_mse: Optional[torch.Tensor] = None
    alphas: Optional[torch.Tensor] = None
    validation_mse_path: Optional[torch.Tensor] = None
    n_iter: Optional[int] = None
    converged: Optional[torch.Tensor] = None
    diagnostics: Dict[str, Any] = field(default_factory=dict)
    standard_errors: Optional[torch.Tensor] = None
    residual_dof: Optional[torch.Tensor] = None

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """Predicted outputs (r, n) for keep masks ``X`` (r, N)."""
        X = X.to(device=self.coef.device, dtype=self.coef.dtype)
        return X @ self.coef.T + self.intercept

    def summary(self) -> Dict[str, Any]:
        """Scalars for logging: solver, alpha, mean mses, iterations, convergence."""

        def mean(t: Optional[torch.Tensor]) -> Optional[float]:
            return None if t is None else float(t.mean())

        alpha: Any = self.alpha
        if isinstance(alpha, torch.Tensor):
            alpha = alpha.tolist()
        return {
            "solver": self.solver,
            "alpha": alpha,
            "train_mse": mean(self.train_mse),
            "validation_mse": mean(self.validation_mse),
            "n_iter": self.n_iter,
            "converged": None if self.converged is None else bool(self.converged.all()),
        }


#: The ``selection`` argument of solvers that choose among several penalties.
SELECTION = Choice(("global", "per_example"))


def alpha_list(alpha: Optional[float], alphas: Optional[Sequence[float]],
               default: Optional[float]) -> Optional[List[float]]:
    """The penalties to solve for, strongest first and without repeats (``alpha``, else
    ``default``, when ``alphas`` is None); None when neither is given. Arguments are checked."""
    if alphas is not None:
        values = torch.as_tensor(alphas, dtype=torch.float64).flatten().tolist()
        return sorted({float(a) for a in values}, reverse=True)
    alpha = default if alpha is None else alpha
    return None if alpha is None else [float(alpha)]


def choice_needs_validation(owner: str, alphas: Optional[List[float]]) -> Optional[str]:
    """The error of a solver given several penalties and nothing to choose among them with."""
    if alphas is None or len(alphas) < 2:
        return None
    return (f"{owner}: {len(alphas)} alphas were given but no validation_stats to choose among"
            " them; pass validation_stats (statistics of held-out masks; validation_fraction >"
            " 0 in collection) or a single alpha.")


def check_alpha_or_alphas(owner: str, alpha: Any, alphas: Any) -> None:
    """A solver takes one penalty or a list to choose among, not both."""
    if alpha is not None and alphas is not None:
        raise ValueError(
            f"{owner}: give either alpha or alphas, not both (got alpha={alpha!r}, "
            f"alphas={alphas!r}).")


class _Describable:
    name: str = "solver"
    #: scikit-learn style: for every constructor argument, the forms it may take (None: may
    #: be None); checked by :meth:`check` and at the start of ``fit``
    _parameter_constraints: ClassVar[Dict[str, List[Optional[Constraint]]]] = {}

    @property
    def gives_standard_errors(self) -> bool:
        """Whether a fit carries ``standard_errors`` (known before any fit)."""
        return False

    def check(self, n_train: int, n_examples: Optional[int], with_validation: bool,
              n_components: Optional[int] = None) -> None:
        """Refuse arguments this solver cannot fit with, before any data exists.

        Args:
            n_train: training masks (rows) the solver will be fitted on.
            n_examples: examples (outputs) per mask; None skips the rules that need it.
            with_validation: whether held-out statistics will be given.
            n_components: components ``N``; None skips the rules that need it.

        Raises ``ValueError`` (``TypeError`` for an argument of the wrong type) saying what was
        given, what is allowed and what to do. Nothing is fitted and no data is read.
        """
        self._validate_params()
        if n_train < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 training masks (rows) to"
                             f" fit; got {n_train}. Record more masks")
        why = self._needs_validation()
        if why is not None and not with_validation:
            raise ValueError(why)
        self._check_sizes(n_train, n_examples, n_components)

    def _validate_params(self) -> None:
        """The arguments against ``_parameter_constraints``, then :meth:`_check_arguments`."""
        validate_parameters(type(self).__name__, self.get_params(),
                            type(self)._parameter_constraints)
        self._check_arguments()

    def _check_arguments(self) -> None:
        """Rules that tie two arguments together (none by default)."""

    def _needs_validation(self) -> Optional[str]:
        """Why this solver needs held-out statistics (the error message), or None."""
        return None

    def _check_sizes(self, n_train: int, n_examples: Optional[int],
                     n_components: Optional[int]) -> None:
        """Rules about the sizes of the data (none by default)."""

    def get_params(self) -> Dict[str, Any]:
        """Constructor arguments (as stored), sklearn style."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def describe(self) -> Dict[str, Any]:
        """Name and parameters, for store metadata."""
        params = {}
        for key, value in self.get_params().items():
            if isinstance(value, torch.dtype):
                value = str(value)
            elif isinstance(value, torch.Tensor):
                value = value.tolist()
            elif isinstance(value, (list, tuple)):
                value = [float(v) for v in value]
            params[key] = value
        return {"name": self.name, **params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _check_stats_pair(stats: Any, validation_stats: Any) -> None:
    if not isinstance(stats, SufficientStatistics):
        raise TypeError(f"stats must be SufficientStatistics, got {type(stats).__name__}.")
    stats.check_rows()  # a count that disagrees with the rows covered: rows added twice
    if validation_stats is None:
        return
    if not isinstance(validation_stats, SufficientStatistics):
        raise TypeError(
            "validation_stats must be SufficientStatistics or None, got "
            f"{type(validation_stats).__name__}."
        )
    if (validation_stats.n_components, validation_stats.n_outputs) != (
        stats.n_components,
        stats.n_outputs,
    ):
        raise ValueError(
            "validation_stats shape (n_components, n_outputs) = "
            f"{(validation_stats.n_components, validation_stats.n_outputs)} does not match "
            f"stats {(stats.n_components, stats.n_outputs)}."
        )
    if validation_stats.count < 1:
        raise ValueError("validation_stats holds no rows.")
    validation_stats.check_rows()


class Solver(_Describable, ABC):
    """Fits all examples from sufficient statistics (needs the N x N Gram matrix)."""

    def fit(
        self,
        stats: SufficientStatistics,
        validation_stats: Optional[SufficientStatistics] = None,
    ) -> FitResult:
        """Fit ``n`` linear models with intercept; see the module docstring."""
        _check_stats_pair(stats, validation_stats)
        self.check(stats.count, stats.n_outputs, validation_stats is not None,
                   stats.n_components)
        return self._fit(stats, validation_stats)

    @abstractmethod
    def _fit(
        self, stats: SufficientStatistics, validation_stats: Optional[SufficientStatistics]
    ) -> FitResult:
        """Implementation; inputs are already checked."""


class StreamingSolver(_Describable, ABC):
    """Fits all examples from repeated passes over ``(X, Y)`` chunks, memory ``O(N n)``."""

    @abstractmethod
    def fit(
        self,
        chunks: ChunkSource,
        validation_stats: Optional[SufficientStatistics] = None,
    ) -> FitResult:
        """Fit from ``chunks()``, a fresh iterator of ``(X, Y)`` per pass."""


def _finish(stats: SufficientStatistics, W: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(coef (n, N), intercept (n,)) from centred-problem weights W (N, n)."""
    mx, my = stats.means()
    intercept = my - mx @ W
    return W.T.contiguous(), intercept


PathStep = Callable[[float, Optional[torch.Tensor]], Tuple[torch.Tensor, Dict[str, Any]]]


def _fit_path(
    solver_name: str,
    stats: SufficientStatistics,
    validation_stats: Optional[SufficientStatistics],
    alphas: List[float],
    solve: PathStep,
    selection: str,
) -> FitResult:
    """Solve for each alpha (warm-starting each from the previous) and pick one.

    ``solve(alpha, W_prev)`` returns ``(W (N, n), info)`` where info may hold ``n_iter``
    (int) and ``converged`` ((n,) bool).
    """
    assert len(alphas) == 1 or validation_stats is not None  # the solver's check
    n = stats.n_outputs
    W_prev: Optional[torch.Tensor] = None
    best_W: Optional[torch.Tensor] = None
    best_conv: Optional[torch.Tensor] = None
    best_mse = torch.full((n,), float("inf"), dtype=stats.dtype, device=stats.device)
    best_alpha = torch.zeros((n,), dtype=torch.float64, device=stats.device)
    best_mean = float("inf")
    chosen: Union[float, torch.Tensor] = alphas[-1]
    path: List[torch.Tensor] = []
    n_iter_total = 0
    any_iter = False
    for a in alphas:
        W, info = solve(a, W_prev)
        W_prev = W
        if "n_iter" in info:
            any_iter = True
            n_iter_total += int(info["n_iter"])
        conv = info.get("converged")
        if validation_stats is None:
            best_W, best_conv, chosen = W, conv, a
            continue
        coef, intercept = _finish(stats, W)
        mse = validation_stats.mse(coef, intercept)
        path.append(mse)
        if selection == "per_example":
            better = mse < best_mse
            if best_W is None:
                better = torch.ones_like(better)
            best_mse = torch.where(better, mse, best_mse)
            best_alpha = torch.where(better, torch.full_like(best_alpha, a), best_alpha)
            best_W = W if best_W is None else torch.where(better[None, :], W, best_W)
            if conv is not None:
                best_conv = conv if best_conv is None else torch.where(better, conv, best_conv)
            chosen = best_alpha
        elif best_W is None or float(mse.mean()) < best_mean:
            best_mean = float(mse.mean())
            best_W, best_conv, chosen = W, conv, a
    val_path = torch.stack(path) if path else None
    assert best_W is not None
    coef, intercept = _finish(stats, best_W)
    return FitResult(
        coef=coef,
        intercept=intercept,
        solver=solver_name,
        alpha=chosen,
        train_mse=stats.mse(coef, intercept),
        validation_mse=None if validation_stats is None else validation_stats.mse(coef, intercept),
        alphas=torch.tensor(alphas, dtype=torch.float64, device=stats.device),
        validation_mse_path=val_path,
        n_iter=n_iter_total if any_iter else None,
        converged=best_conv,
    )


def note_constant_columns(fit: FitResult, stats: SufficientStatistics) -> None:
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
            " share, eb_ridge its prior with the prior's spread as error bar). Use more masks"
            " or a larger ablation_fraction.",
            UserWarning, stacklevel=4)
