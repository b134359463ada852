"""One process vs a process group: the same COAR statistics, collected on W ranks.

    torchrun --nproc_per_node=2 benchmarks/distributed_collect.py
    torchrun --nproc_per_node=2 benchmarks/distributed_collect.py --n-masks 4000 --examples 300

A small CNN (:class:`captum_coar.demo_model.DigitsCNN`, trained briefly on rank 0 on
scikit-learn's digits and broadcast to every rank) is attributed to its conv filters. Rank 0
first collects the statistics alone (``collect_statistics``, ``--single-threads`` torch
threads, default 1); then every rank collects its share of the mask
rows (``collect_statistics_distributed``, one thread per rank on the CPU) and the statistics
are all-reduced. Rank 0 prints both wall times, the largest relative difference between the
two sets of statistics and the largest difference between the two least-squares fits.
Backend: nccl when every rank has its own GPU (the model then lives on ``cuda:LOCAL_RANK``),
else gloo on the CPU. Run without torchrun, it is a group of one.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from captum_coar.coar import ComponentAblationRegression, collect_statistics, tensor_batches
from captum_coar.demo_model import DigitsCNN, load_digits_split, train_digits_cnn
from captum_coar.selectors import conv_filters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-masks", type=int, default=2000)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--single-threads", type=int, default=1,
                        help="torch threads of the one-process run (default 1: on a busy"
                             " machine more threads than free cores only slow it down)")
    args = parser.parse_args()

    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29531")):
        os.environ.setdefault(key, value)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ["WORLD_SIZE"])
    use_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= world
    if use_gpu:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if use_gpu else "cpu")
    dist.init_process_group("nccl" if use_gpu else "gloo")
    rank = dist.get_rank()
    try:
        run(args, rank, world, device)
    finally:
        dist.destroy_process_group()


def run(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> None:
    x_train, y_train, x_test, y_test = load_digits_split()
    if rank == 0:
        model = train_digits_cnn(x_train, y_train, epochs=args.epochs, width=args.width)
    else:
        model = DigitsCNN(width=args.width).eval()
    model = model.to(device)
    for value in model.state_dict().values():  # the same weights everywhere
        dist.broadcast(value, src=0)
    for p in model.parameters():
        p.requires_grad_(False)
    components = conv_filters(model, ["conv1", "conv2", "conv3"])
    x, y = x_test[: args.examples].to(device), y_test[: args.examples].to(device)
    data = tensor_batches(x, y, batch_size=args.batch_size)
    settings = dict(n_masks=args.n_masks, ablation_fraction=args.alpha, seed=0,
                    validation_fraction=0.1)
    coar = ComponentAblationRegression(model, components)

    single = None
    if rank == 0:
        torch.set_num_threads(args.single_threads)
        start = time.perf_counter()
        single = collect_statistics(model, components, data, **settings)
        _sync(device)
        single_time = time.perf_counter() - start
    dist.barrier()
    torch.set_num_threads(1)
    start = time.perf_counter()
    stats = coar.collect_statistics_distributed(data, **settings)
    _sync(device)
    group_time = time.perf_counter() - start
    if rank != 0 or single is None:
        return
    stat_diff = max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
        for part_a, part_b in ((stats.train, single.train), (stats.validation, single.validation))
        if part_a is not None and part_b is not None
        for a, b in zip(part_a.to_dict().values(), part_b.to_dict().values()))
    coef_group = coar.fit(stats).fit.coef
    coef_single = coar.fit(single).fit.coef
    coef_diff = float((coef_group - coef_single).abs().max())
    print(f"DigitsCNN(width={args.width}) on {device.type}: N = {components.n_components} conv"
          f" filters, {len(y)} examples, n_masks = {args.n_masks} (10% validation),"
          f" alpha = {args.alpha}, backend = {dist.get_backend()}")
    print(f"1 process  ({args.single_threads} thread(s)):     {single_time:7.2f} s")
    print(f"{world} processes (1 thread each): {group_time:7.2f} s  (speed-up"
          f" {single_time / group_time:.2f}x; includes fingerprint checks and the all-reduce)")
    print(f"max relative difference of the statistics: {stat_diff:.2e}")
    print(f"max |coefficient difference| (least squares): {coef_diff:.2e}"
          f"  (coefficients up to {float(coef_single.abs().max()):.3f})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
