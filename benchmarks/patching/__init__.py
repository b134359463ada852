"""Patching benchmark: exact activation patching against cheap estimates on IOI and recall
(``python -m benchmarks.patching.run``)."""
