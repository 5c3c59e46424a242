"""Retraining a published run from its record and comparing, evaluation by evaluation, what it measures
with what was published: bit for bit on the same device, thread count and CPU instruction set (the records
say which data and, since 0.2.3, which instruction set; training on the CPU with the same threads and
kernels repeats every floating-point sum in the same order, while AVX2 and AVX-512 kernels sum in other
orders)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import DataMismatchError, data_mismatch, load_dataset
from .environment import Environment, capture
from .rundir import MetricsRow, RunFolderError, read_config, read_metrics, read_provenance, run_path
from .training import train

COMPARED = ("train_loss", "train_acc", "val_acc", "test_acc")  # what a retrained run must give again


@dataclass(frozen=True)
class Reproduction:
    """A retrained run against its record: evaluations compared, how many were bit-identical, the largest
    difference of each compared field, the last test accuracies (recorded, retrained), and what differed
    between the machines (``machine_difference``; None: nothing it knows of)."""

    evaluations: int
    identical: int
    largest: dict[str, float]
    test_acc: tuple[float, float]
    machines: str | None = None

    @property
    def exact(self) -> bool:
        return self.identical == self.evaluations


def compare(recorded: list[MetricsRow], retrained: list[MetricsRow]) -> Reproduction:
    """``COMPARED`` fields of the evaluations of the same epochs; ValueError when the epochs differ."""
    if [r.epoch for r in recorded] != [r.epoch for r in retrained]:
        raise ValueError("the retrained run evaluated other epochs than the record: not the same configuration")
    largest = {name: 0.0 for name in COMPARED}
    identical = 0
    for old, new in zip(recorded, retrained):
        same = True
        for name in COMPARED:
            a, b = getattr(old, name), getattr(new, name)
            if a is None and b is None:
                continue
            difference = math.inf if a is None or b is None else abs(a - b)
            largest[name] = max(largest[name], difference)
            same = same and difference == 0
        identical += same
    return Reproduction(len(recorded), identical, largest, (recorded[-1].test_acc, retrained[-1].test_acc))


def machine_difference(recorded: Sequence[Environment], now: Environment) -> str | None:
    """What differs between the record's training sessions and this one, of what fixes the order of a
    training's floating-point sums (device, threads, CPU instruction set), in words; None when nothing does."""

    def kernels(e: Environment) -> str:
        return f"{e.device}, {e.threads} thread(s), {e.cpu_capability or 'instruction set not recorded'}"

    if not recorded:
        return f"the record does not say what it trained on; this run on {kernels(now)}"
    theirs = list(dict.fromkeys(kernels(e) for e in recorded))
    if theirs == [kernels(now)]:
        return None
    return f"the record trained on {'; then '.join(theirs)}; this run on {kernels(now)}"


def reproduce(
    run_dir: str | Path, root: str | Path, device: str = "cpu", log: Callable[[str], None] = print
) -> Reproduction:
    """Train the configuration of the published ``run_dir`` again from scratch under ``root`` on ``device``
    (on the CPU, with this process's thread count: set it before the process starts, ``OMP_NUM_THREADS``,
    since ``torch.set_num_threads`` breaks some builds' batched solves), after checking that this machine's
    data are the ones the run recorded, and compare its metrics with the published ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    recorded = read_metrics(run_dir)
    if not recorded:
        raise RunFolderError(f"{run_dir} has no metrics rows to compare with")
    provenance = read_provenance(run_dir)
    if provenance is not None and provenance.data is not None:
        note = data_mismatch(provenance.data, load_dataset(config.dataset, config.data_dir).record)
        if note is not None:
            raise DataMismatchError(f"{run_dir}: {note}; the retrained run would not be comparable")
    config = dataclasses.replace(config, root=str(root), device=device)
    if run_path(config).exists():
        raise RunFolderError(f"{run_path(config)} exists: choose an empty --root for the retrained run")
    machines = machine_difference(() if provenance is None else provenance.trainings, capture(torch.device(device)))
    log(f"retraining {run_dir} into {run_path(config)} on {torch.get_num_threads()} thread(s)")
    if machines is not None:
        log(f"not the record's machine: {machines}; its numbers may differ in the last bits, then drift")
    retrained = train(config, log=log)
    return dataclasses.replace(compare(recorded, retrained), machines=machines)
