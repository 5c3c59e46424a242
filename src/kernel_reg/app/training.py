"""The training loop: builds everything from a ``Config``, steps, evaluates, checkpoints, resumes.

One step: batch -> [augmentation] -> [attack] -> cross-entropy + sum of penalties -> SGD step ->
[projection]. Every ``eval_delta`` epochs (and at the last one): accuracies, the spectral upper bound of
the RKHS norm, ``metrics.jsonl`` and ``checkpoint.pt``, both written atomically; every ``probe_delta``
epochs, the lower bounds on a fixed probe batch too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed, lipschitz, penalties, spectral
from ..attacks import Attack
from ..deformations import RandomDeformation
from ..distributed import SINGLE, Group
from ..guard import preserved_state
from ..lipschitz.margin import LipschitzMargin
from ..lipschitz.orthogonal import CayleyConv2d
from ..progress import progress
from . import environment, regularizers
from .builders import build_model, load_data, load_weights, resolve_device
from .config import Config, differences
from .data import DataMismatchError, Splits, batches, random_crop_flip
from .metrics import accuracy
from .rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    PROVENANCE,
    ROBUSTNESS,
    WEIGHTS,
    BestWeights,
    Checkpoint,
    MetricsRow,
    Provenance,
    RunFolderError,
    check_not_nested,
    clear_divergence,
    finite_or_none,
    locked,
    read_checkpoint,
    read_config,
    read_metrics,
    read_provenance,
    run_path,
    write_checkpoint,
    write_config,
    write_divergence,
    write_metrics,
    write_provenance,
)
from .signals import Interrupted

Log = Callable[[str], None]
# fields that may change when a run is resumed (num_epochs only upwards)
RESUMABLE_CHANGES = ("num_epochs",)


class TrainingDiverged(RuntimeError):
    """A loss term or a parameter became non-finite; the message says which, and what was kept."""


class TrainingInterrupted(Interrupted):
    """Ctrl-C (SIGINT) stopped training; the message says at which epoch and which checkpoint is kept."""


# power-iteration steps that bring the normalized weights' vectors to convergence at the end of each epoch (one
# step per training step lags: on a lipnet at lr 0.05, layers ended at up to 1.39 instead of 1)
EPOCH_POWER_STEPS = 100


@dataclass
class Regularizers:
    """What the configuration asks for, built: named penalties, an optional attack, an optional projection,
    an optional Lipschitz margin and the scale s of the cross-entropy, CE(s z, y) / s."""

    penalties: dict[str, penalties.Penalty] = field(default_factory=dict)
    attack: Attack | None = None
    projection: spectral.Projection | None = None
    margin: LipschitzMargin | None = None
    ce_scale: float = 1.0

    @classmethod
    def of(cls, built: dict[str, regularizers.Built]) -> Regularizers:
        """The built regularizers, by name, sorted into penalties, the attack and the projection."""
        made = cls()
        for name, obj in built.items():
            if isinstance(obj, Attack):
                made.attack = obj
            elif isinstance(obj, spectral.Projection):
                made.projection = obj
            else:
                made.penalties[name] = obj
        return made

    def modules(self) -> dict[str, nn.Module]:
        """The parts that keep a state between steps (persistent power-iteration vectors), by name."""
        parts: dict[str, object] = {**self.penalties, "projection": self.projection, "margin": self.margin}
        return {name: part for name, part in parts.items() if isinstance(part, nn.Module)}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The state of ``modules``, on the CPU."""
        return {name: {k: v.cpu() for k, v in m.state_dict().items()} for name, m in self.modules().items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]], device: torch.device) -> None:
        modules = self.modules()
        for name, values in state.items():
            modules[name].load_state_dict({k: v.to(device) for k, v in values.items()})


def build_regularizers(config: Config, group: Group = SINGLE, input_shape: Sequence[int] | None = None) -> Regularizers:
    """The penalties, attack and projection of ``config.regs``, each from the registry with its own
    hyperparameters, and the Lipschitz margin when ``config.lipschitz_margin`` > 0 (without a gradient
    through L when an operator-norm projection holds L: see ``margin``); on several processes
    (``group``), suprema and per-example noise span the global batch. ``input_shape``: of one input (the
    operator norms need it)."""
    built = Regularizers.of(
        {s.name: regularizers.build(s.name, dict(s.params), group, input_shape) for s in config.regs}
    )
    built.ce_scale = config.ce_scale
    if config.lipschitz_margin > 0:
        if input_shape is None:
            raise ValueError("the Lipschitz margin needs input_shape, the shape of one input of the model")
        # L held by the operator projection or the normalization
        held = config.normalization is not None or (
            built.projection is not None and built.projection.norm == "operator"
        )
        built.margin = LipschitzMargin(
            eps=config.lipschitz_margin,
            input_shape=input_shape,
            through_bound=not held,
            pairwise=config.margin_rule == "pairwise",
        )
    return built


def step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    regs: Regularizers,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int = 0,
    trained: nn.Module | None = None,
    group: Group = SINGLE,
) -> dict[str, torch.Tensor]:
    """One training step on the batch (x, y), the one that training, the distributed test and the benchmark
    all take: [attack: x <- attack(model, x, y)] -> cross-entropy of ``trained`` (the model, or its DDP
    wrapper) on logits [raised by the Lipschitz margin] [scaled: CE(s z, y) / s] + the penalties (given
    the raw logits: those that ``reuses_logits`` share this forward pass) -> backward -> optimizer step ->
    [power iteration of the normalized weights] -> [projection at ``epoch``].

    Returns the loss terms by name. TrainingDiverged, before the parameters change, when a term is not
    finite on any process of ``group`` (a collective decision) or a penalty's eigendecomposition fails.
    """
    if regs.attack is not None:
        x = regs.attack(model, x, y)
    if any(penalty.reuses_logits for penalty in regs.penalties.values()):
        x = x.detach().requires_grad_(True)  # they differentiate the training pass's logits in x
    raw = (trained or model)(x)
    logits = raw if regs.margin is None else regs.margin(model, raw, y)
    terms = {"cross-entropy": F.cross_entropy(logits * regs.ce_scale, y) / regs.ce_scale}
    for name, penalty in regs.penalties.items():
        try:
            terms[name] = penalty(model, x, y, logits=raw)
        except torch.linalg.LinAlgError as error:  # an eigendecomposition of non-finite weights
            raise TrainingDiverged(f"{name} failed ({error})") from None
    total = torch.stack(list(terms.values())).sum()
    if group.any(~torch.isfinite(total)):
        name = next((name for name, value in terms.items() if not torch.isfinite(value)), "another rank's loss")
        hint = (
            " (the Lipschitz margin adds sqrt(2) L eps to the non-target logits: lower it or the learning rate)"
            if regs.margin is not None
            else ""
        )
        value = float(terms[name].detach()) if name in terms else float("nan")
        raise TrainingDiverged(f"{name} became {value}{hint}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    lipschitz.renormalize_(model)
    if regs.projection is not None:
        regs.projection(model, epoch)
    return terms


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the original's) or Adam, both with L2 weight decay ``wd``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.wd)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.wd)


def build_augmentation(
    config: Config, shape: tuple[int, ...], data_rng: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The transforms of ``config.aug_transforms`` on images of ``shape`` (C, H, W), in the order crop, flip,
    deform; "auto": random crops and flips for colour images (CIFAR), random deformations for grayscale
    digits and clothes. Crops pad by H // 8 pixels (4 on CIFAR, 3 on 28 x 28 images)."""
    if not config.aug:
        return None
    transforms = config.aug_transforms.split("+")
    if config.aug_transforms == "auto":
        transforms = ["crop", "flip"] if shape[0] == 3 else ["deform"]
    padding, flip = shape[1] // 8, "flip" in transforms
    deformation = RandomDeformation(amplitude=config.deform_amplitude) if "deform" in transforms else None

    def augment(x: torch.Tensor) -> torch.Tensor:
        if "crop" in transforms or flip:  # padding 0: the crop is the image itself, a flip alone
            x = random_crop_flip(x, padding if "crop" in transforms else 0, generator=data_rng, flip=flip)
        return x if deformation is None else deformation(x)

    return augment


def rkhs_lower_bounds(
    model: nn.Module, probe_x: torch.Tensor, probe_eps: float, candidates: int | None = None
) -> dict[str, float]:
    """Lower bounds of the RKHS norm of the model in eval mode on the probe batch x (n, *shape):

        rkhs_lower_grad = sqrt(sum_j max_i ||grad_x f_j(x_i)||^2),
        rkhs_lower_delta = sqrt(sum_j max_i (f_j(x_i + d_ij) - f_j(x_i))^2) / eps,  ||d_ij||_2 <= eps,

    the values of ``GradientPenalty`` and ``AdversarialPerturbationPenalty`` at lmbda = 1, both from one
    set of per-class input gradients and without a parameter graph. ``candidates``: continue the ascent
    for ||f||_delta from the m examples of steepest gradient per class only (None, the default: all n;
    a pre-selection misses the maximiser of smooth, e.g. adversarially trained, models: bench/README.md)."""
    with preserved_state(model, mode=False), torch.enable_grad():
        clean, grads = penalties.class_input_gradients(model, probe_x.detach())  # (n, k), (n, k, *shape)
        grad_sq = grads.flatten(2).pow(2).sum(2).amax(0).sum()
        search = penalties.AdversarialPerturbationPenalty(eps=probe_eps, candidates=candidates)
        increases = search.search(model, probe_x.detach(), (clean.detach(), grads))[0]  # (k,)
    return dict(
        rkhs_lower_grad=math.sqrt(float(grad_sq)),
        rkhs_lower_delta=math.sqrt(float(increases.pow(2).sum())) / probe_eps,
    )


def spectral_upper_bound(model: nn.Module) -> float:
    """prod_l sigma_max(W_l_mat), the product of the layers' reshaped-kernel spectral norms (in float64):
    the paper's upper bound of the RKHS norm, which holds for its kernel up to architecture constants (patch
    sizes, pooling). It is not a bound on the lower bounds of an arbitrary network (a ``lipnet`` under the
    operator projection: 0.006 against lower bounds of 0.94); ``lipschitz.lipschitz_upper_bound`` is. An
    orthogonal ``CayleyConv2d``, which has no reshaped kernel, counts its operator norm (1)."""
    with torch.no_grad():
        norms = [
            float(torch.linalg.matrix_norm(spectral.weight_matrix(layer).double(), ord=2))
            for _, layer in spectral.spectral_layers(model)
        ]
        norms += [lipschitz.layer_upper_bound(m, ()) for m in model.modules() if isinstance(m, CayleyConv2d)]
    return math.exp(math.fsum(math.log(norm) for norm in norms))


@dataclass
class Resume:
    """Where a run starts: the saved training state (None: from scratch) and whether config.json must be
    (re)written; ``done``: the run is already trained to its last epoch."""

    state: Checkpoint | None
    write_config: bool
    done: bool = False


def _resume_point(config: Config, run_dir: Path, log: Log) -> Resume:
    """Check the run folder against ``config`` before anything is written.

    A folder holding another configuration is refused with the differing fields (num_epochs may grow);
    an unreadable checkpoint is refused, never started over; a run already at its last epoch is left as is."""
    if not (run_dir / CONFIG).is_file():
        if (run_dir / CHECKPOINT).is_file():
            raise RunFolderError(f"{run_dir} holds a {CHECKPOINT} but no {CONFIG}; set it aside with --fresh")
        return Resume(None, write_config=True)
    if not (run_dir / CHECKPOINT).is_file():
        records = [name for name in (METRICS, ROBUSTNESS) if (run_dir / name).is_file()]
        if records:
            raise RunFolderError(
                f"{run_dir} holds {' and '.join(records)} but no {CHECKPOINT}: the checkpoint was lost. Nothing "
                "was changed; --fresh sets the folder aside and starts over"
            )
    saved = read_config(run_dir)
    changed = differences(saved, config, ignore=RESUMABLE_CHANGES)
    if config.num_epochs < saved.num_epochs:
        changed.append(f"num_epochs: saved {saved.num_epochs}, now {config.num_epochs} (it may only grow)")
    if changed:
        raise RunFolderError(
            f"{run_dir} holds a run with another configuration ({'; '.join(changed)}); nothing was changed. "
            "Choose another --name, or --fresh to set the old run aside"
        )
    if not (run_dir / CHECKPOINT).is_file():
        return Resume(None, write_config=True)
    state = read_checkpoint(run_dir)
    if state.epoch >= config.num_epochs - 1:
        log(f"{run_dir} is already trained to its last epoch ({state.epoch}); nothing to do")
        _repair_metrics(run_dir, list(state.metrics), log)
        return Resume(state, write_config=False, done=True)
    log(f"resuming {run_dir} after epoch {state.epoch}")
    if (run_dir / WEIGHTS).is_file():  # an export of weights that training now moves on from
        (run_dir / WEIGHTS).unlink()
        log(f"removed {run_dir / WEIGHTS}, exported at an earlier epoch: export the run again when it is trained")
    return Resume(state, write_config=config.num_epochs != saved.num_epochs)


def _repair_metrics(run_dir: Path, rows: list[MetricsRow], log: Log) -> None:
    """Rewrite metrics.jsonl from the checkpoint's rows when the file was damaged or lost."""
    try:
        intact = read_metrics(run_dir) == rows
    except RunFolderError:
        intact = False
    if not intact:
        write_metrics(run_dir, rows)
        log(f"{run_dir / METRICS} did not match the checkpoint: rewritten from it")


def train(config: Config, log: Log = print, allow_other_data: bool = False) -> list[MetricsRow]:
    """Train as ``config`` says, resuming from the run folder's checkpoint if there is one; returns the
    metrics rows. The run folder is locked while training (a second process on it fails at once). The data
    read and this session's environment go to ``provenance.json``; a resume on data other than the run's
    record raises DataMismatchError, unless ``allow_other_data`` (the difference is then recorded).

    Under torchrun (WORLD_SIZE > 1) every process trains its shard of each global batch with
    DistributedDataParallel; rank 0 alone logs, locks and writes."""
    group, rank_device = distributed.setup()
    try:
        if not group.is_main:
            return _train(config, lambda _: None, group, rank_device, allow_other_data)
        if rank_device is None:
            resolve_device(config.device)  # a device this machine lacks fails before the run folder is made
        check_not_nested(run_path(config), Path(config.root) / config.experiment)
        with locked(run_path(config), "kernel-reg train", create=True, remedy="choose another --name") as run_dir:
            clear_divergence(run_dir)
            try:
                return _train(config, log, group, rank_device, allow_other_data)
            except TrainingDiverged as error:
                write_divergence(run_dir, str(error))
                raise
    finally:
        distributed.teardown(group)


def _train(
    config: Config, log: Log, group: Group, rank_device: torch.device | None, allow_other_data: bool
) -> list[MetricsRow]:
    device = rank_device or resolve_device(config.device)
    run_dir = run_path(config)
    resume = _resume_point(config, run_dir, log if group.is_main else lambda _: None)
    metrics = list(resume.state.metrics) if resume.state is not None else []
    if resume.done:
        return metrics
    provenance = read_provenance(run_dir) if resume.state is not None else None
    recorded = None if provenance is None else provenance.data
    try:
        splits, data, note = load_data(config, device, recorded=recorded, allow_other=allow_other_data)
    except DataMismatchError as error:
        raise DataMismatchError(f"cannot resume {run_dir}: {error}") from None
    if group.is_main:
        start = 0 if resume.state is None else resume.state.epoch + 1
        session = environment.capture(device, start, note)
        earlier = () if provenance is None else provenance.trainings
        note_before = None if provenance is None else provenance.note
        write_provenance(run_dir, Provenance(recorded or data, (*earlier, session), note_before))
        if note is not None:
            log(f"WARNING: {note}; going on as --allow-other-data asks (recorded in {run_dir / PROVENANCE})")
    model = build_model(config, device, splits.input_shape)
    trained: nn.Module = model
    if group.world > 1:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.sched_step, config.sched_gamma)
    regs = build_regularizers(config, group, splits.input_shape)
    data_rng = torch.Generator().manual_seed(config.seed)
    augment = build_augmentation(config, tuple(splits.train_x.shape[1:]), data_rng)
    probe_x = splits.train_x[: config.probe_size]

    best: BestWeights | None = None  # the weights of best validation accuracy, which evaluation uses
    start_epoch = 0
    state = resume.state
    if state is not None:
        if state.optimizer is None or state.scheduler is None or state.rng is None:
            raise RunFolderError(f"{run_dir / CHECKPOINT} holds weights without a training state: it cannot resume")
        load_weights(model, state.model, run_dir)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        best = state.best
        start_epoch = state.epoch + 1
        torch.set_rng_state(state.rng["torch"])
        data_rng.set_state(state.rng["data"])
        if device.type == "cuda" and state.rng.get("cuda") is not None:
            torch.cuda.set_rng_state(state.rng["cuda"], device)
        regs.load_state_dict(state.penalties, device)
    else:
        torch.manual_seed(config.seed)
    if resume.write_config and group.is_main:
        write_config(run_dir, config)

    def kept() -> str:
        if not metrics:
            return "no checkpoint had been written yet (the first is written at the first evaluation)"
        return f"the checkpoint of epoch {metrics[-1].epoch} is kept in {run_dir}"

    epoch_seconds: list[float] = []
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.num_epochs):
            began = time.perf_counter()
            tau = regs.projection.radius(epoch) if regs.projection is not None else None
            lr = optimizer.param_groups[0]["lr"]  # the rate of this epoch's steps, read before the scheduler moves it
            model.train()
            steps = math.ceil(splits.train_x.shape[0] / config.batch_size)
            for x, y in progress(
                batches(splits.train_x, splits.train_y, config.batch_size, data_rng), steps, f"epoch {epoch}"
            ):
                if augment is not None:
                    x = augment(x)  # on the global batch, so that each example's draw is that of one process
                shard = group.shard(len(x))
                try:
                    step(model, x[shard], y[shard], regs, optimizer, epoch=epoch, trained=trained, group=group)
                except TrainingDiverged as error:
                    raise TrainingDiverged(f"{error} at epoch {epoch}; {kept()}") from None
            lipschitz.renormalize_(model, steps=EPOCH_POWER_STEPS)  # the weights evaluated and saved: norms at 1
            if regs.projection is not None:
                regs.projection.finish_epoch(model, epoch)
            scheduler.step()
            epoch_seconds.append(time.perf_counter() - began)
            broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
            if broken:
                raise TrainingDiverged(
                    f"parameters {', '.join(broken)} became non-finite at epoch {epoch} (lower the learning rate); "
                    f"{kept()}"
                )

            last = epoch == config.num_epochs - 1
            if epoch % config.eval_delta == 0 or last:
                eval_began = time.perf_counter()
                # the first evaluation of each probe_delta epochs: evaluations fall on multiples of eval_delta
                lower_bounds = epoch % config.probe_delta < config.eval_delta or last
                record = _evaluate(model, splits, config, probe_x if lower_bounds else None)
                row = MetricsRow(
                    epoch=epoch,
                    lr=lr,
                    seconds_per_epoch=sum(epoch_seconds) / len(epoch_seconds),
                    eval_seconds=time.perf_counter() - eval_began,
                    tau=tau,
                    **record,
                )
                epoch_seconds = []
                if row.val_acc is not None and (best is None or row.val_acc > best.val_acc):
                    best = BestWeights(epoch, row.val_acc, _cpu_copy(model.state_dict()))
                metrics.append(row)
                if group.is_main:
                    rng = {
                        "torch": torch.get_rng_state(),
                        "data": data_rng.get_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    }
                    checkpoint = Checkpoint(
                        model=model.state_dict(), epoch=epoch, best=best, metrics=tuple(metrics),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng,
                        penalties=regs.state_dict(),
                    )  # fmt: skip
                    write_checkpoint(run_dir, checkpoint)
                    write_metrics(run_dir, metrics)
                log(_format(row))  # after the save: a reader of this line finds the epoch on disk
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"stopped during epoch {epoch}; {kept()}; rerun the same command to resume") from None
    return metrics


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _evaluate(model: nn.Module, splits: Splits, config: Config, probe_x: torch.Tensor | None) -> dict:
    """Accuracies and the RKHS-norm bracket of the model now (the fields of a MetricsRow), its lower bounds
    on ``probe_x`` (None: skipped)."""
    batch = config.test_batch_size
    train_loss, train_acc = accuracy(model, splits.train_x, splits.train_y, batch, "training-set accuracy")
    _, val_acc = accuracy(model, splits.val_x, splits.val_y, batch, "validation accuracy")
    _, test_acc = accuracy(model, splits.test_x, splits.test_y, batch, "test accuracy")
    record = dict(train_loss=train_loss, train_acc=train_acc, val_acc=finite_or_none(val_acc), test_acc=test_acc)
    record["rkhs_upper_spectral"] = spectral_upper_bound(model)
    if probe_x is None:
        return record | dict(rkhs_lower_grad=None, rkhs_lower_delta=None)
    began = time.perf_counter()
    record.update(rkhs_lower_bounds(model, probe_x, config.probe_epsilon))
    return record | dict(bracket_seconds=time.perf_counter() - began)


def _format(row: MetricsRow) -> str:
    """One log line per evaluation."""
    parts = [f"epoch {row.epoch}", f"train_loss {row.train_loss:.4f}", f"train_acc {row.train_acc:.4f}"]
    if row.val_acc is not None:
        parts.append(f"val_acc {row.val_acc:.4f}")
    parts.append(f"test_acc {row.test_acc:.4f}")
    if row.rkhs_lower_grad is not None and row.rkhs_lower_delta is not None:
        parts.append(f"rkhs lower [{row.rkhs_lower_grad:.3g}, {row.rkhs_lower_delta:.3g}]")
    parts.append(f"spectral product {row.rkhs_upper_spectral:.3g}")
    if row.tau is not None:
        parts.append(f"tau {row.tau:.3f}")
    parts.append(f"{row.seconds_per_epoch:.1f}s/epoch + {row.eval_seconds:.1f}s evaluation")
    return ", ".join(parts)
