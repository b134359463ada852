"""Shared set-up of the fault-injection tests: a tiny conv net, its data, a reference store."""

import shutil
from pathlib import Path

import numpy as np
import torch
from toy_models import ConvNet, randomise_batchnorm

from captum_coar.coar import ComponentAblationRegression, collect, tensor_batches
from captum_coar.selectors import conv_filters
from captum_coar.stores import MemmapStore

N_MASKS = 64
SETTINGS = dict(n_masks=N_MASKS, ablation_fraction=0.2, seed=0, chunk_rows=32,
                perturbations_per_eval=16)
ARRAYS = ("masks.npy", "outputs.npy", "progress.npy", "checksums.npy")


def make_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = randomise_batchnorm(ConvNet()).eval()
    components = conv_filters(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 1, 6, 6, generator=g), torch.randint(0, 10, (10,), generator=g)
    return model, components, tensor_batches(x, y, batch_size=4)


def make_reference(directory: Path):
    """A complete store at ``directory / "reference"`` and the fit from it."""
    model, components, data = make_setup()
    path = directory / "reference"
    collect(model, components, data, str(path), **SETTINGS)
    coef = ComponentAblationRegression(model, components).fit(str(path)).attributions
    return path, coef


def copy_store(reference: Path, target: Path) -> Path:
    shutil.copytree(reference, target)
    return target


def arrays(path: Path):
    return {name: np.load(path / name, allow_pickle=False) for name in ARRAYS}


def assert_same_arrays(a: Path, b: Path) -> None:
    """Masks, outputs and progress bit-identical; every row of ``a`` verifies (checksums are
    salted with the store's own metadata, so a re-initialised store has other checksums)."""
    fa, fb = arrays(a), arrays(b)
    for name in ("masks.npy", "outputs.npy", "progress.npy"):
        assert fa[name].dtype == fb[name].dtype, name
        assert np.array_equal(fa[name], fb[name]), name
    assert MemmapStore(a, read_only=True).verify().ok


def data_offset(path: Path) -> int:
    """Byte offset of the data after a .npy file's header."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(handle)
        else:
            np.lib.format.read_array_header_2_0(handle)
        return handle.tell()


def flip_byte(path: Path, offset: int, mask: int = 0x10) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ mask]))
