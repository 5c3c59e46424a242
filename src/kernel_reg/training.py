"""The training loop: builds everything from a ``Config``, steps, evaluates, checkpoints, resumes.

One step: batch -> [augmentation] -> [attack] -> cross-entropy + sum of penalties -> SGD step ->
[projection]. Every ``eval_delta`` epochs (and at the last one): accuracies, the RKHS-norm bracket on a
fixed probe batch, ``metrics.jsonl`` and ``checkpoint.pt``, both written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed, penalties, spectral
from ._guards import preserved_state
from .attacks import PGDL2, PGDLinf
from .config import Config
from .data import Splits, batches, random_crop_flip
from .deformations import RandomDeformation
from .distributed import SINGLE, Group
from .evaluation import accuracy
from .rundir import (
    CHECKPOINT,
    CONFIG,
    atomic_torch_save,
    atomic_write_text,
    build_model,
    load_splits,
    read_config,
    resolve_device,
    run_path,
    write_metrics,
)

Log = Callable[[str], None]
# fields that may change when a run is resumed
RESUMABLE_CHANGES = ("num_epochs", "device", "root")


class TrainingDiverged(RuntimeError):
    """A loss term became non-finite; the last good checkpoint is kept."""


@dataclass
class Regularizers:
    """What the configuration asks for, built: named penalties, an optional attack, the projection."""

    penalties: dict[str, penalties.Penalty] = field(default_factory=dict)
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    project: bool = False

    @property
    def spectral_penalty(self) -> spectral.SpectralNormPenalty | None:
        return next((p for p in self.penalties.values() if isinstance(p, spectral.SpectralNormPenalty)), None)


def build_regularizers(config: Config, group: Group = SINGLE) -> Regularizers:
    """The penalties, attack and projection named by ``config.regs``, with the config's strengths; on
    several processes (``group``), suprema and per-example noise span the global batch."""
    deformation = RandomDeformation(amplitude=config.deform_amplitude)
    makers: dict[str, Callable[[], penalties.Penalty]] = {
        "adv-perturbation": lambda: penalties.AdversarialPerturbationPenalty(
            config.epsilon, config.steps, candidates=config.delta_candidates, group=group
        ),
        "gradient-penalty": lambda: penalties.GradientPenalty(config.lmbda, group),
        "loss-gradl2": lambda: penalties.LossGradientPenalty(config.lmbda, "l2"),
        "loss-gradl1": lambda: penalties.LossGradientPenalty(config.lmbda, "l1"),
        "vat": lambda: penalties.VATPenalty(config.vat_alpha, config.epsilon, config.vat_xi, group=group),
        "stability": lambda: penalties.DeformationStabilityPenalty(
            config.lmbdast, config.stability_tr_per_ex, deformation, group=group
        ),
        "gradtangent": lambda: penalties.TangentGradientPenalty(
            config.lmbdatan, config.stability_num_deformations, deformation, group=group
        ),
        "penalize-sn-pi": lambda: spectral.SpectralNormPenalty(config.lmbdasn, "power", config.nb_it),
        "penalize-sn-svd": lambda: spectral.SpectralNormPenalty(config.lmbdasn, "svd"),
    }
    built = Regularizers(project="project-sn" in config.regs)
    for reg in config.regs:
        if reg in makers:
            penalty = makers[reg]()
            if reg in ("stability", "gradtangent") and config.stability_ex_per_batch is not None:
                penalty = penalties.FirstExamples(penalty, config.stability_ex_per_batch)
            built.penalties[reg] = penalty
    if "pgd-l2" in config.regs:
        built.attack = PGDL2(config.epsilon, config.steps, group=group)
    if "pgd-linf" in config.regs:
        built.attack = PGDLinf(config.epsilon, config.steps, config.linf_step_size, group=group)
    return built


def build_augmentation(
    config: Config, channels: int, data_rng: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """CIFAR (3 channels): random crops and flips; grayscale digits and clothes: random deformations."""
    if not config.aug:
        return None
    if channels == 3:
        return lambda x: random_crop_flip(x, generator=data_rng)
    return RandomDeformation(amplitude=config.deform_amplitude)


def rkhs_bracket(model: nn.Module, probe_x: torch.Tensor, probe_eps: float) -> dict[str, float]:
    """Lower bounds (sup gradient norm, ||f||_delta / eps) on the probe batch, and the spectral upper
    bound (the product of the layers' sigma_max(W_mat)), of the model in eval mode."""
    with preserved_state(model, mode=False):
        grad_sq = float(penalties.GradientPenalty(1.0)(model, probe_x).detach())
        delta_sq = float(penalties.AdversarialPerturbationPenalty(probe_eps, lmbda=1.0)(model, probe_x).detach())
    with torch.no_grad():
        log_upper = sum(
            math.log(float(torch.linalg.matrix_norm(layer.weight.flatten(1).double(), ord=2)))
            for _, layer in spectral.spectral_layers(model)
        )
    return dict(
        rkhs_lower_grad=math.sqrt(grad_sq),
        rkhs_lower_delta=math.sqrt(delta_sq) / probe_eps,
        rkhs_upper_spectral=math.exp(log_upper),
    )


def _prepare_run_dir(config: Config, log: Log, write: bool = True) -> tuple[Path, dict | None]:
    """The run folder with config.json written, and the checkpoint to resume from, if any."""
    run_dir = run_path(config)
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.is_file():
        saved = read_config(run_dir)
        differences = [
            f"{f.name}: saved {getattr(saved, f.name)!r}, now {getattr(config, f.name)!r}"
            for f in dataclasses.fields(Config)
            if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)
        ]
        if differences:
            raise ValueError(
                f"{run_dir} holds a run with another configuration ({'; '.join(differences)}); "
                "choose another --name, or --fresh to set the old run aside"
            )
        log(f"resuming {run_dir}")
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    else:
        state = None
    if write:
        atomic_write_text(run_dir / CONFIG, config.to_json())
    return run_dir, state


def _progress(iterable, total: int, description: str):  # type: ignore[no-untyped-def]
    """A progress bar on a terminal, the bare iterable otherwise."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False)


def train(config: Config, log: Log = print) -> list[dict]:
    """Train as ``config`` says, resuming from the run folder's checkpoint if there is one; returns the metrics.

    Under torchrun (WORLD_SIZE > 1) every process trains its shard of each global batch with
    DistributedDataParallel; rank 0 alone logs and writes."""
    group, rank_device = distributed.setup()
    try:
        return _train(config, log if group.is_main else lambda _: None, group, rank_device)
    finally:
        distributed.teardown(group)


def _train(config: Config, log: Log, group: Group, rank_device: torch.device | None) -> list[dict]:
    device = rank_device or resolve_device(config.device)
    splits: Splits = load_splits(config, device)
    model = build_model(config, device)
    trained: nn.Module = model
    if group.world > 1:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.wd)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.sched_step, config.sched_gamma)
    regs = build_regularizers(config, group)
    data_rng = torch.Generator().manual_seed(config.seed)
    augment = build_augmentation(config, splits.train_x.shape[1], data_rng)
    probe_x = splits.train_x[: config.probe_size]

    run_dir, state = _prepare_run_dir(config, log, write=group.is_main)
    metrics: list[dict] = []
    best: dict | None = None  # the weights of best validation accuracy, which evaluation uses
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        metrics = state["metrics"]
        best = state["best"]
        start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng"]["torch"])
        data_rng.set_state(state["rng"]["data"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        if regs.spectral_penalty is not None:
            regs.spectral_penalty.load_state_dict({k: v.to(device) for k, v in state["spectral"].items()})
    else:
        torch.manual_seed(config.seed)

    epoch_seconds: list[float] = []
    for epoch in range(start_epoch, config.num_epochs):
        began = time.perf_counter()
        tau = spectral.tau_schedule(config.tau, config.kappa, epoch)
        model.train()
        steps = math.ceil(splits.train_x.shape[0] / config.batch_size)
        for x, y in _progress(
            batches(splits.train_x, splits.train_y, config.batch_size, data_rng), steps, f"epoch {epoch}"
        ):
            if augment is not None:
                x = augment(x)  # on the global batch, so that each example's draw is that of one process
            shard = group.shard(len(x))
            x, y = x[shard], y[shard]
            if regs.attack is not None:
                x = regs.attack(model, x, y)
            terms = {"cross-entropy": F.cross_entropy(trained(x), y)}
            terms.update({name: penalty(model, x, y) for name, penalty in regs.penalties.items()})
            total = torch.stack(list(terms.values())).sum()
            if group.any(~torch.isfinite(total)):
                name = next((name for name, value in terms.items() if not torch.isfinite(value)), "another rank's loss")
                value = float(terms[name].detach()) if name in terms else float("nan")
                raise TrainingDiverged(
                    f"{name} became {value} at epoch {epoch}; the last good checkpoint is kept in {run_dir}"
                )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if regs.project:
                spectral.project_(model, tau)
        scheduler.step()
        epoch_seconds.append(time.perf_counter() - began)
        broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if broken:
            raise TrainingDiverged(
                f"parameters {', '.join(broken)} became non-finite at epoch {epoch} (lower the learning rate); "
                f"the last good checkpoint is kept in {run_dir}"
            )

        if epoch % config.eval_delta == 0 or epoch == config.num_epochs - 1:
            record = _evaluate(model, splits, config, probe_x)
            record.update(
                epoch=epoch,
                lr=optimizer.param_groups[0]["lr"],
                seconds_per_epoch=sum(epoch_seconds) / len(epoch_seconds),
            )
            if regs.project:
                record["tau"] = tau
            epoch_seconds = []
            if record["val_acc"] is not None and (best is None or record["val_acc"] > best["val_acc"]):
                best = dict(epoch=epoch, val_acc=record["val_acc"], model=_cpu_copy(model.state_dict()))
            metrics.append(record)
            log(_format(record))
            if group.is_main:
                spectral_state = regs.spectral_penalty.state_dict() if regs.spectral_penalty is not None else {}
                rng = {
                    "torch": torch.get_rng_state(),
                    "data": data_rng.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                }
                checkpoint = dict(
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    epoch=epoch,
                    metrics=metrics,
                    best=best,
                    rng=rng,
                    spectral={k: v.cpu() for k, v in spectral_state.items()},
                )
                atomic_torch_save(checkpoint, run_dir / CHECKPOINT)
                write_metrics(run_dir, metrics)
    return metrics


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _evaluate(model: nn.Module, splits: Splits, config: Config, probe_x: torch.Tensor) -> dict:
    train_loss, train_acc = accuracy(model, splits.train_x, splits.train_y, config.test_batch_size)
    val_acc = accuracy(model, splits.val_x, splits.val_y, config.test_batch_size)[1] if len(splits.val_y) else None
    _, test_acc = accuracy(model, splits.test_x, splits.test_y, config.test_batch_size)
    record = dict(train_loss=train_loss, train_acc=train_acc, val_acc=val_acc, test_acc=test_acc)
    record.update(rkhs_bracket(model, probe_x, config.probe_epsilon))
    return record


def _format(record: dict) -> str:
    """One log line per evaluation."""
    parts = [f"epoch {record['epoch']}"]
    for key in ("train_loss", "train_acc", "val_acc", "test_acc"):
        if record[key] is not None:
            parts.append(f"{key} {record[key]:.4f}")
    lower = f"{record['rkhs_lower_grad']:.3g}, {record['rkhs_lower_delta']:.3g}"
    parts.append(f"rkhs lower [{lower}] upper {record['rkhs_upper_spectral']:.3g}")
    if "tau" in record:
        parts.append(f"tau {record['tau']:.3f}")
    parts.append(f"{record['seconds_per_epoch']:.1f}s/epoch")
    return ", ".join(parts)
