"""COAR-Edit benchmark: five editing tasks (``python -m benchmarks.editing.run``)."""
