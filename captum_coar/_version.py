"""The package version, in a module of its own.

Contract
--------
:data:`__version__` is the one place the version is written. The package root re-exports it,
the build reads it from here (``pyproject.toml``), and modules that record it (store metadata)
import it from here, never from the package root, so no module imports its own package.
"""

__all__ = ["__version__"]

__version__ = "0.2.0"
