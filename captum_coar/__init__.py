"""captum_coar: component attribution for PyTorch models, as a Captum plugin.

Public names in pipeline order: declare components, choose an ablation, run gated forwards.
"""

from .ablation import (
                         AblationStrategy,
                         ConstantAblation,
                         MeanAblation,
                         ResampleAblation,
                         WeightAblation,
                         ZeroAblation,
                         resolve_ablation,
)
from .components import ComponentGroup, ComponentSet, attention_heads, conv_filters, linear_neurons
from .edits import WeightEdit, ablate_persistently, zero_components
from .engine import evaluate_masks
from .gates import ComponentGates, ablated, record_activations
from .outputs import Logit, LogProb, Loss, Margin, OutputFunction, SequenceMargin, resolve_output

__version__ = "0.1.0"

__all__ = [
    "ComponentGroup", "ComponentSet", "conv_filters", "linear_neurons", "attention_heads",
    "AblationStrategy", "ZeroAblation", "WeightAblation", "ConstantAblation", "MeanAblation",
    "ResampleAblation", "resolve_ablation",
    "ComponentGates", "ablated", "record_activations",
    "OutputFunction", "Margin", "Logit", "LogProb", "Loss", "SequenceMargin", "resolve_output",
    "evaluate_masks",
    "WeightEdit", "zero_components", "ablate_persistently",
    "__version__",
]
