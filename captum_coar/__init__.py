"""captum_coar: component attribution for PyTorch models, as a Captum plugin.

The top level holds what the README and the tutorials teach (:data:`__all__`, at most 40
names, in pipeline order: declare components, ablate and record, outputs, COAR, baselines and
Captum interop, evaluation, plots, patching, editing). Every other public name lives at
exactly one subpackage or module face (:data:`MOVED` maps each name that used to be here to
it); reading one of those names here still works until 0.4.0, with a ``DeprecationWarning``
that names the new path. Every face is imported here, as before, so the names strings resolve
to (ablations, outputs, samplers, solvers) are registered whatever is imported first.
Plotting functions import matplotlib only when called.
"""

from . import (  # noqa: F401 - every face is imported (registries), as before
    ablation,
    baselines,
    coar,
    components,
    dictionaries,
    editing,
    edits,
    engine,
    evaluation,
    experts,
    gates,
    interop,
    language_outputs,
    outputs,
    patching,
    patching_plots,
    positions,
    recording,
    sampling,
    selectors,
    solvers,
    sparse_autoencoder,
    stores,
    visualization,
)
from ._deprecation import moved_names
from ._version import __version__ as __version__  # the version, not in __all__
from .baselines import (ComponentAblation, ComponentAtPStar, ComponentAttributionPatching,
                        ComponentIntegratedGradients, ComponentRelevancePatching)
from .coar import (ComponentAblationRegression, StopWhen, merge_statistics, save_statistics,
                   tensor_batches)
from .components import ComponentGroup, ComponentSet
from .dictionaries import Dictionary, dictionary_latents
from .edits import zero_components
from .evaluation import counterfactual_correlation, topk_ablation_curve
from .experts import moe_experts
from .gates import ablated
from .interop import GatedForward, ablation_perturbation
from .outputs import Margin, SequenceMargin
from .patching import activation_patching
from .patching_plots import plot_patching_grid
from .positions import residual_stream
from .recording import record_activations
from .selectors import attention_heads, conv_filters, linear_neurons, mlp_neurons
from .sparse_autoencoder import SparseAutoencoder, train_sparse_autoencoder
from .stores import MemmapStore
from .visualization import (plot_component_attributions, plot_correlation_bars,
                            plot_counterfactual_scatter, plot_topk_curves)

__all__ = [
    # components
    "ComponentSet", "ComponentGroup", "conv_filters", "linear_neurons", "attention_heads",
    "mlp_neurons", "residual_stream", "moe_experts",
    "Dictionary", "dictionary_latents", "SparseAutoencoder", "train_sparse_autoencoder",
    # ablate and record
    "ablated", "record_activations",
    # outputs
    "Margin", "SequenceMargin",
    # COAR, at data-set scale
    "ComponentAblationRegression", "StopWhen", "tensor_batches", "MemmapStore",
    "save_statistics", "merge_statistics",
    # baselines and Captum interop
    "ComponentAblation", "ComponentAttributionPatching", "ComponentAtPStar",
    "ComponentIntegratedGradients", "ComponentRelevancePatching",
    "GatedForward", "ablation_perturbation",
    # evaluation and plots
    "counterfactual_correlation", "topk_ablation_curve", "plot_counterfactual_scatter",
    "plot_correlation_bars", "plot_component_attributions", "plot_topk_curves",
    # activation patching
    "activation_patching", "plot_patching_grid",
    # editing
    "zero_components",
]

#: every public name that left the top level in 0.3.0 -> its one face (old imports warn)
MOVED = {
    **dict.fromkeys(["at_positions"], "captum_coar.positions"),
    **dict.fromkeys(["AblationStrategy", "ZeroAblation", "WeightAblation", "ConstantAblation",
                     "MeanAblation", "ResampleAblation", "PatchAblation", "resolve_ablation",
                     "fitted_ablation"], "captum_coar.ablation"),
    **dict.fromkeys(["ComponentGates"], "captum_coar.gates"),
    **dict.fromkeys(["ActivationRecorder"], "captum_coar.recording"),
    **dict.fromkeys(["OutputFunction", "Logit", "LogProb", "Loss", "resolve_output"],
                    "captum_coar.outputs"),
    **dict.fromkeys(["LanguageModelForward", "LanguageModelOutput", "TokenLogProb",
                     "ContinuationLogProb", "LogitDifference"], "captum_coar.language_outputs"),
    **dict.fromkeys(["evaluate_masks"], "captum_coar.engine"),
    **dict.fromkeys(["MaskSampler", "BernoulliSampler", "FixedFractionSampler",
                     "resolve_sampler"], "captum_coar.sampling"),
    **dict.fromkeys(["MaskOutputStore", "InMemoryStore", "StoreReport"], "captum_coar.stores"),
    **dict.fromkeys(["SufficientStatistics", "FitResult", "Solver", "StreamingSolver",
                     "LeastSquares", "Ridge", "Lasso", "MinibatchRidge", "AutoRidge",
                     "AutoLasso", "DifferenceOfMeans", "resolve_solver", "SingularMatrixWarning",
                     "ConvergenceWarning"], "captum_coar.solvers"),
    **dict.fromkeys(["model_fingerprint", "collect", "collect_statistics",
                     "CollectedStatistics", "COARResult", "AdaptiveReport", "shard_rows",
                     "collect_shard", "collect_statistics_shard", "load_statistics",
                     "collect_statistics_distributed", "collect_distributed",
                     "all_reduce_statistics"], "captum_coar.coar"),
    **dict.fromkeys(["ComponentGradientXParameter", "ComponentConductance",
                     "ComponentInternalInfluence"], "captum_coar.baselines"),
    **dict.fromkeys(["CounterfactualCorrelationResult", "TopKAblationCurve", "EVALUATION_SEED"],
                    "captum_coar.evaluation"),
    **dict.fromkeys(["output_label"], "captum_coar.visualization"),
    **dict.fromkeys(["PatchingResult"], "captum_coar.patching"),
    **dict.fromkeys(["WeightEdit", "ablate_persistently"], "captum_coar.edits"),
    **dict.fromkeys(["component_scores", "select_components", "edit_masks", "edit_curve",
                     "choose_k", "coar_edit", "apply_edit", "edited_state_dict"],
                    "captum_coar.editing"),
    **dict.fromkeys(["EditCurve", "EditResult"], "captum_coar.editing_results"),
}

__getattr__ = moved_names(__name__, MOVED)
