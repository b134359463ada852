"""The notebooks run in the full suite (``python -m pytest``), not in the fast tier: each is
marked ``slow`` here, so ``python -m pytest -m "not slow"`` skips them."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
