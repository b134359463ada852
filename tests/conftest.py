"""Shared fixtures for every test folder, and the one place that puts tests/ on sys.path.

The test folders mirror the package (tests/coar/, tests/solvers/, ...) and have no
``__init__.py``: test files are imported by basename, so every basename is unique. The helper
modules beside this file (toy_models, coar_fixtures, fault_fixtures) are imported by name from
any folder, because this file puts tests/ first on sys.path.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402
from toy_models import AttentionClassifier, ConvNet, randomise_batchnorm

from captum_coar.components import ComponentSet
from captum_coar.selectors import conv_filters, linear_neurons
from captum_coar.testing import AdditiveNet

# Tests use tiny tensors, for which one thread is faster and steadier than several.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


# ------------------------------------------------------------- models shared by baseline tests
@pytest.fixture
def convnet():
    torch.manual_seed(1)
    model = randomise_batchnorm(ConvNet())
    components = ComponentSet(model, conv_filters(model).groups + linear_neurons(model, ["fc1"]).groups)
    x = torch.randn(4, 1, 8, 8)
    return model, components, x, torch.tensor([1, 2, 3, 4])


@pytest.fixture
def attention():
    torch.manual_seed(2)
    model = AttentionClassifier().eval()
    x = torch.randn(3, 6, 3)
    return model, x, torch.tensor([0, 3, 1])


@pytest.fixture
def additive():
    torch.manual_seed(3)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=12, n_classes=3, seed=3).eval()
    x = torch.randn(5, 6)
    target = torch.tensor([0, 1, 2, 0, 1])
    return model, linear_neurons(model, ["hidden"]), x, target
