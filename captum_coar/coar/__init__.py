"""COAR: component ablation regression, and the pipeline that collects its data.

The face of this subpackage is small: the estimator
(:class:`ComponentAblationRegression` and its :class:`COARResult`), collection into stores or
sufficient statistics (:func:`collect`, :func:`collect_statistics`,
:class:`CollectedStatistics`, :func:`tensor_batches`) and how it runs
(:class:`CollectionOptions`), and the ways to split collection over
jobs (:mod:`.shards`) and processes (:mod:`.distributed`). Modules with a leading underscore
(settings, data batches, fingerprints) are internal.

Modules: ``estimator`` (the Captum attribution class), ``result`` (its result, with standard
errors and confidence intervals), ``adaptive`` (collection in rounds
until a stopping rule holds), ``collection`` (one pass over the data per chunk of mask rows),
``shards`` (independent jobs, saved and merged statistics), ``distributed``
(``torch.distributed`` process groups), and the internal ``_identity`` (the one definition of
what makes a collection: model, components, data, settings and behavioural probes),
``_settings`` (validated collection settings), ``_options`` (how a collection runs: the one
options object), ``_collected`` (collected statistics),
``_entry_points`` (the estimator's shard and distributed methods), ``_batches`` (reading
batches), ``_fingerprint`` (model and data fingerprints).
"""

from ._fingerprint import model_fingerprint
from ._options import CollectionOptions
from .adaptive import AdaptiveReport, StopWhen, collect_until
from .collection import CollectedStatistics, collect, collect_statistics, tensor_batches
from .distributed import all_reduce_statistics, collect_distributed, collect_statistics_distributed
from .estimator import COARResult, ComponentAblationRegression
from .shards import (
                     collect_shard,
                     collect_statistics_shard,
                     load_statistics,
                     merge_statistics,
                     save_statistics,
                     shard_rows,
)

__all__ = [
    "ComponentAblationRegression", "COARResult", "StopWhen", "AdaptiveReport", "collect_until",
    "collect", "collect_statistics", "CollectedStatistics", "CollectionOptions", "tensor_batches",
    "model_fingerprint",
    "shard_rows", "collect_shard", "collect_statistics_shard", "save_statistics",
    "load_statistics", "merge_statistics",
    "collect_statistics_distributed", "collect_distributed", "all_reduce_statistics",
]
