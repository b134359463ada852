"""captum_coar: component attribution for PyTorch models, as a Captum plugin."""

__version__ = "0.1.0"
