"""What the RKHS-norm monitor costs in a preset run, and whether its cheap search loses anything.

    python bench/monitor_cost.py                                  # fmnist300_vgg5 and fmnist1000_vgg5
    python bench/monitor_cost.py --runs results/small_data_fit/fmnist1000_vgg5/*/   # agreement, trained

Timing: on the preset's data and model (untrained), the median of ``--repeats`` training epochs, of the
accuracy passes of one evaluation (training, validation and test sets) and of the lower bounds, both as
the two penalties at every evaluation (what the monitor computed before) and as
``training.rkhs_lower_bounds`` (one set of class gradients) every ``probe_delta`` epochs. The share of a
run's wall time:

    before: bounds / (eval_delta * epoch + accuracies + bounds),
    now:    bounds / (probe_delta * epoch + (probe_delta / eval_delta) * accuracies + bounds).

Agreement (``--runs``): on each trained run's last weights, ||f||_delta / eps from the search that
pre-selects m examples per class over that of the exhaustive one (1 = nothing lost).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kernel_reg import penalties
from kernel_reg.app.builders import build_model, load_run, load_splits
from kernel_reg.app.config import preset_config
from kernel_reg.app.data import batches
from kernel_reg.app.metrics import accuracy
from kernel_reg.app.training import build_optimizer, build_regularizers, rkhs_lower_bounds, step
from kernel_reg.guard import preserved_state


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``work`` after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def two_penalties(model: torch.nn.Module, probe_x: torch.Tensor, eps: float) -> None:
    """The lower bounds as the monitor computed them before: each penalty on its own."""
    with preserved_state(model, mode=False):
        penalties.GradientPenalty(lmbda=1.0)(model, probe_x)
        penalties.AdversarialPerturbationPenalty(lmbda=1.0, eps=eps)(model, probe_x)


def timing(experiment: str, repeats: int) -> None:
    """One table row: the costs of one evaluation period of the preset, in seconds, and the bracket's share."""
    config = preset_config(experiment)
    device = torch.device("cpu")
    splits = load_splits(config, device)
    model = build_model(config, device)
    optimizer = build_optimizer(config, model)
    regs = build_regularizers(config, input_shape=splits.input_shape)
    data_rng = torch.Generator().manual_seed(0)
    probe_x = splits.train_x[: config.probe_size]

    def epoch() -> None:
        model.train()
        for x, y in batches(splits.train_x, splits.train_y, config.batch_size, data_rng):
            step(model, x, y, regs, optimizer, epoch=0, trained=model)

    def accuracies() -> None:
        for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y), (splits.test_x, splits.test_y)):
            if len(x):
                accuracy(model, x, y, config.test_batch_size, "accuracy")

    seconds = {
        "epoch": median_seconds(epoch, repeats),
        "accuracies": median_seconds(accuracies, repeats),
        "before": median_seconds(lambda: two_penalties(model, probe_x, config.probe_epsilon), repeats),
        "now": median_seconds(lambda: rkhs_lower_bounds(model, probe_x, config.probe_epsilon), repeats),
    }
    epoch_s, accuracies_s = seconds["epoch"], seconds["accuracies"]
    evaluations = config.probe_delta / config.eval_delta
    before = seconds["before"] / (config.eval_delta * epoch_s + accuracies_s + seconds["before"])
    now = seconds["now"] / (config.probe_delta * epoch_s + evaluations * accuracies_s + seconds["now"])
    print(
        f"| {experiment} | {config.eval_delta} / {config.probe_delta} | {seconds['epoch']:.2f} "
        f"| {seconds['accuracies']:.2f} | {seconds['before']:.2f} ({before:.0%}) | {seconds['now']:.2f} ({now:.0%}) |",
        flush=True,
    )


def agreement(run_dirs: list[str], candidates: list[int], probe_size: int | None) -> None:
    """||f||_delta / eps of the search pre-selecting m examples per class over the exhaustive one, for each
    m in ``candidates``, on each run's last weights and the first ``probe_size`` training examples (None:
    the run's probe)."""
    print("| run | exhaustive | " + " | ".join(f"m={m}" for m in candidates) + " |")
    print("|---|---|" + "---|" * len(candidates))
    for run_dir in run_dirs:
        run = load_run(run_dir, "cpu", which="last")
        probe_x = run.splits.train_x[: probe_size or run.config.probe_size]
        eps = run.config.probe_epsilon
        full = rkhs_lower_bounds(run.model, probe_x, eps)["rkhs_lower_delta"]
        ratios = [rkhs_lower_bounds(run.model, probe_x, eps, m)["rkhs_lower_delta"] / full for m in candidates]
        print(f"| {Path(run_dir).name} | {full:.4g} | " + " | ".join(f"{r:.4f}" for r in ratios) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", nargs="+", default=["fmnist300_vgg5", "fmnist1000_vgg5"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", nargs="+", help="trained run folders: measure agreement instead of time")
    parser.add_argument("--candidates", nargs="+", type=int, default=[16, 32, 64], help="m, for --runs")
    parser.add_argument("--probe-size", type=int, help="probe examples for --runs (default: each run's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s)")
    if args.runs:
        agreement(args.runs, args.candidates, args.probe_size)
        return
    print("| preset | eval / bounds every | epoch s | accuracies s | bounds before s (share) | bounds now s (share) |")
    print("|---|---|---|---|---|---|")
    for experiment in args.experiments:
        timing(experiment, args.repeats)


if __name__ == "__main__":
    main()
