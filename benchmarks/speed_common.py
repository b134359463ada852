"""Shared pieces of the speed benchmark: timing side by side, the setup-A model, agreement.

Contract
--------
``measure(functions, repeats, device, warmup=1) -> (timings, results)``
    Runs every function ``warmup`` times, then ``repeats`` rounds in which each function
    runs once; the order alternates between rounds (forward, reversed, ...) so that slow
    drift of a shared machine's load hits every function alike. ``timings[name]`` is a
    :class:`Timing` with the median wall-clock and process-CPU seconds and every sample;
    ``results[name]`` is the value of the function's last call. On CUDA the device is
    synchronised around every call and CPU time is not recorded (it says nothing there).

``ratio(slow, fast)`` -> slow / fast on wall and on CPU time (None where either is missing).

``load_setup_a(quick, device, n_examples)`` -> :class:`SetupA`: setup A's ResNetSmall
    (``benchmarks.train.train_or_load("resnet")``, cached), its 928 conv filters without the
    downsample convs, and ``n_examples`` Fashion-MNIST test images with labels, all on
    ``device``.

``agreement(a, b)`` -> max |a - b| and that divided by max |b| (a dict).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)


@dataclass
class Timing:
    """Median seconds (wall clock and process CPU) and every sample."""

    wall: float
    cpu: Optional[float]
    wall_samples: List[float] = field(default_factory=list)
    cpu_samples: List[float] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"wall_s": self.wall, "cpu_s": self.cpu,
                "wall_samples_s": [round(t, 6) for t in self.wall_samples],
                "cpu_samples_s": [round(t, 6) for t in self.cpu_samples]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(functions: Dict[str, Callable[[], Any]], repeats: int, device: torch.device,
            warmup: int = 1) -> Tuple[Dict[str, Timing], Dict[str, Any]]:
    """Time ``functions`` side by side; see the module docstring."""
    results: Dict[str, Any] = {}
    for name, function in functions.items():
        for _ in range(warmup):
            results[name] = function()
    walls: Dict[str, List[float]] = {name: [] for name in functions}
    cpus: Dict[str, List[float]] = {name: [] for name in functions}
    names = list(functions)
    for round_ in range(max(1, repeats)):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            sync(device)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            results[name] = functions[name]()
            sync(device)
            walls[name].append(time.perf_counter() - wall0)
            cpus[name].append(time.process_time() - cpu0)
    on_cpu = device.type == "cpu"
    timings = {name: Timing(statistics.median(walls[name]),
                            statistics.median(cpus[name]) if on_cpu else None,
                            walls[name], cpus[name] if on_cpu else [])
               for name in functions}
    return timings, results


def ratio(slow: Timing, fast: Timing) -> Dict[str, Optional[float]]:
    """``slow / fast`` on wall-clock and on CPU time."""
    cpu = None
    if slow.cpu is not None and fast.cpu is not None and fast.cpu > 0:
        cpu = slow.cpu / fast.cpu
    return {"wall": slow.wall / fast.wall, "cpu": cpu}


def agreement(a: Tensor, b: Tensor) -> Dict[str, float]:
    """Largest absolute difference, and that relative to the largest |b|."""
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return {"max_abs_diff": diff, "max_abs_reference": scale,
            "relative": diff / scale if scale > 0 else diff}


@dataclass
class SetupA:
    """Setup A's trained ResNet, its conv-filter components and test data."""

    model: nn.Module
    components: Any
    module_names: List[str]
    x: Tensor
    y: Tensor
    info: Dict[str, Any]
    dataset: str


def load_setup_a(quick: bool, device: torch.device, n_examples: int) -> SetupA:
    """ResNetSmall of setup A (cached), 928 conv filters, ``n_examples`` test images."""
    from benchmarks.data import load_fashion_mnist
    from benchmarks.train import train_or_load
    from captum_coar import conv_filters

    threads = torch.get_num_threads()
    model, info = train_or_load("resnet", quick=quick, device="cpu", threads=threads,
                                verbose=False)
    torch.set_num_threads(threads)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    names = model.conv_layer_names(include_downsample=False)
    components = conv_filters(model, names)
    data = load_fashion_mnist(n_train=1, n_test=n_examples)
    x, y = data.x_test, data.y_test
    if x.shape[0] < n_examples:  # the small digits fallback: tile the test split
        reps = -(-n_examples // x.shape[0])
        x, y = x.repeat(reps, 1, 1, 1), y.repeat(reps)
    info = {k: info.get(k) for k in ("test_accuracy", "dataset", "dataset_is_fallback",
                                     "steps", "quick", "loaded_from_cache")}
    return SetupA(model, components, names, x[:n_examples].to(device),
                  y[:n_examples].to(device), info, data.name)
