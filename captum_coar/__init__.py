"""captum_coar: component attribution for PyTorch models, as a Captum plugin.

Public names in pipeline order: declare components, choose an ablation and an output, run
gated forwards, attribute (COAR and baselines), evaluate, plot, edit. Plotting functions
import matplotlib only when called.
"""

from .components import ComponentGroup, ComponentSet
from .selectors import attention_heads, conv_filters, linear_neurons, mlp_neurons
from .ablation import (AblationStrategy, ConstantAblation, MeanAblation, PatchAblation,
                       ResampleAblation,
                       WeightAblation, ZeroAblation, fitted_ablation, resolve_ablation)
from .gates import ComponentGates, ablated
from ._recording import ActivationRecorder, record_activations
from .outputs import (Logit, LogProb, Loss, Margin, OutputFunction, SequenceMargin,
                      resolve_output)
from .language_outputs import (ContinuationLogProb, LanguageModelForward, LanguageModelOutput,
                               LogitDifference, TokenLogProb)
from ._engine import evaluate_masks
from .sampling import BernoulliSampler, FixedFractionSampler, MaskSampler, resolve_sampler
from .solvers import (AutoLasso, AutoRidge, ConvergenceWarning, DifferenceOfMeans, FitResult,
                      Lasso, LeastSquares, MinibatchRidge,
                      Ridge, SingularMatrixWarning, Solver, StreamingSolver,
                      SufficientStatistics, resolve_solver)
from .stores import InMemoryStore, MaskOutputStore, MemmapStore, StoreReport
from .coar import (AdaptiveReport, COARResult, CollectedStatistics, ComponentAblationRegression,
                   StopWhen,
                   all_reduce_statistics, collect, collect_distributed, collect_shard,
                   collect_statistics, collect_statistics_distributed, collect_statistics_shard,
                   load_statistics, merge_statistics, model_fingerprint, save_statistics,
                   shard_rows, tensor_batches)
from .baselines import (ComponentAblation, ComponentAtPStar, ComponentAttributionPatching,
                        ComponentConductance, ComponentGradientXParameter,
                        ComponentIntegratedGradients, ComponentInternalInfluence,
                        ComponentRelevancePatching)
from .interop import GatedForward, ablation_perturbation
from .evaluation import (EVALUATION_SEED, CounterfactualCorrelationResult, TopKAblationCurve,
                         counterfactual_correlation, topk_ablation_curve)
from .visualization import (output_label, plot_component_attributions, plot_correlation_bars,
                            plot_counterfactual_scatter, plot_topk_curves)
from .patching import PatchingResult, activation_patching
from .patching_plots import plot_patching_grid
from .positions import at_positions, residual_stream
from .experts import moe_experts
from .dictionaries import Dictionary, dictionary_latents
from .sparse_autoencoder import SparseAutoencoder, train_sparse_autoencoder
from .edits import WeightEdit, ablate_persistently, zero_components
from .editing import (EditCurve, EditResult, apply_edit, choose_k, coar_edit, component_scores,
                      edit_curve, edit_masks, edited_state_dict, select_components)

from ._version import __version__

__all__ = [
    # components
    "ComponentGroup", "ComponentSet", "conv_filters", "linear_neurons", "attention_heads",
    "mlp_neurons", "residual_stream", "at_positions", "moe_experts",
    "Dictionary", "dictionary_latents", "SparseAutoencoder", "train_sparse_autoencoder",
    # ablation and gates
    "AblationStrategy", "ZeroAblation", "WeightAblation", "ConstantAblation", "MeanAblation",
    "ResampleAblation", "PatchAblation", "resolve_ablation", "fitted_ablation", "ComponentGates", "ablated",
    "ActivationRecorder", "record_activations",
    # outputs and the batched engine
    "OutputFunction", "Margin", "Logit", "LogProb", "Loss", "SequenceMargin", "resolve_output",
    "LanguageModelForward", "LanguageModelOutput", "TokenLogProb", "ContinuationLogProb",
    "LogitDifference",
    "evaluate_masks",
    # COAR: sampling, collection, stores, solvers
    "MaskSampler", "BernoulliSampler", "FixedFractionSampler", "resolve_sampler",
    "MaskOutputStore", "InMemoryStore", "MemmapStore", "StoreReport", "model_fingerprint",
    "collect", "collect_statistics", "CollectedStatistics", "tensor_batches",
    "SufficientStatistics", "FitResult", "Solver", "StreamingSolver", "LeastSquares", "Ridge",
    "Lasso", "MinibatchRidge", "AutoRidge", "AutoLasso", "DifferenceOfMeans", "resolve_solver",
    "SingularMatrixWarning", "ConvergenceWarning",
    "ComponentAblationRegression", "COARResult", "StopWhen", "AdaptiveReport",
    # many processes, machines or jobs
    "shard_rows", "collect_shard", "collect_statistics_shard", "save_statistics",
    "load_statistics", "merge_statistics", "collect_statistics_distributed",
    "collect_distributed", "all_reduce_statistics",
    # baselines and Captum interop
    "ComponentAblation", "ComponentAttributionPatching", "ComponentIntegratedGradients",
    "ComponentGradientXParameter", "ComponentConductance", "ComponentInternalInfluence",
    "ComponentAtPStar", "ComponentRelevancePatching",
    "GatedForward", "ablation_perturbation",
    # evaluation and plots
    "counterfactual_correlation", "CounterfactualCorrelationResult", "topk_ablation_curve",
    "TopKAblationCurve", "EVALUATION_SEED", "plot_counterfactual_scatter",
    "plot_correlation_bars", "plot_component_attributions", "plot_topk_curves", "output_label",
    # activation patching between paired prompts
    "activation_patching", "PatchingResult", "plot_patching_grid",
    # editing
    "WeightEdit", "zero_components", "ablate_persistently",
    "component_scores", "select_components", "edit_masks", "edit_curve", "choose_k", "coar_edit",
    "EditCurve", "EditResult", "apply_edit", "edited_state_dict",
    "__version__",
]
