"""The objects of a run, made from its config: the device, the data splits, the model; and a trained run
rebuilt from its folder for evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import lipschitz, models
from .config import Config, check_device
from .data import NUM_CLASSES, DataMismatchError, DataRecord, Splits, data_mismatch, load_dataset, make_splits
from .rundir import CHECKPOINT, CONFIG, RunFolderError, read_checkpoint, read_config, read_provenance


def resolve_device(name: str) -> torch.device:
    """The device of a run: 'auto' is CUDA when available, else the CPU. ValueError for a device this
    machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(check_device(name))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use --device cpu (or auto)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_splits(config: Config, device: torch.device, n_test: int | None = None) -> Splits:
    """The run's training / validation / test tensors on ``device``."""
    return load_data(config, device, n_test)[0]


def load_data(
    config: Config,
    device: torch.device,
    n_test: int | None = None,
    recorded: DataRecord | None = None,
    parts: tuple[str, ...] = ("train", "test"),
    allow_other: bool = False,
) -> tuple[Splits, DataRecord, str | None]:
    """(splits on ``device``, the record of the data read, the override note): the data of ``config``
    (``config.n_test``, or the first ``n_test`` test images), checked against the run's ``recorded`` data
    on ``parts``. Different data raise DataMismatchError naming both hashes, unless ``allow_other``: then
    the note says what differed (None when nothing did)."""
    dataset = load_dataset(config.dataset, config.data_dir)
    note = None if recorded is None else data_mismatch(recorded, dataset.record, parts)
    if note is not None and not allow_other:
        raise DataMismatchError(
            f"{note}; pass --data-dir with the folder of the run's files, or --allow-other-data to go on "
            "anyway (the difference is recorded beside the result)"
        )
    n_test = config.n_test if n_test is None else n_test
    splits = make_splits(dataset.arrays, config.n_train, config.n_val, config.shuf_seed, device, n_test)
    return splits, dataset.record, note


def build_model(config: Config, device: torch.device, input_shape: Sequence[int] | None = None) -> nn.Module:
    """The run's model, initialised from ``config.seed``, its weights normalized by their operator norms (or
    its convolutions orthogonal) on inputs of ``input_shape`` (the shape of one input) when
    ``config.normalization`` asks for it."""
    torch.manual_seed(config.seed)
    model = models.build(config.model, NUM_CLASSES, config.width, config.activation).to(device)
    if config.normalization is not None:
        if input_shape is None:
            raise ValueError(f"normalization={config.normalization!r} needs input_shape, the shape of one model input")
        if config.normalization == "orthogonal":
            lipschitz.orthogonalize_(model, input_shape)
        else:
            lipschitz.normalize_(model, input_shape)
    return model


@dataclass
class LoadedRun:
    """A run folder rebuilt: its config, model (eval mode) with the chosen weights, data splits, the epoch
    of those weights, which they are ("best-validation" or "last") and the last epoch trained."""

    config: Config
    model: nn.Module
    splits: Splits
    epoch: int
    weights: str
    trained_to: int
    data: DataRecord | None = None
    data_override: str | None = None


def load_run(
    run_dir: str | Path,
    device: str = "auto",
    n_test: int | None = None,
    which: str = "best",
    data_dir: str | None = None,
    allow_other_data: bool = False,
    parts: tuple[str, ...] = ("test",),
) -> LoadedRun:
    """A run folder's model and data. ``which="best"``: the weights of best validation accuracy, or the last
    ones when the run has no validation set; "last": the last. ``data_dir``: where the data are on this
    machine (None: the run's own setting); data other than the run recorded on ``parts`` (the test set, by
    default; "train" for the validation split, carved from the training pool) raise DataMismatchError
    unless ``allow_other_data``."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    target = resolve_device(device)
    state = read_checkpoint(run_dir, target, weights=True)
    provenance = read_provenance(run_dir)
    recorded = None if provenance is None else provenance.data
    try:
        splits, data, note = load_data(config, target, n_test, recorded, parts, allow_other_data)
    except DataMismatchError as error:
        raise DataMismatchError(f"{run_dir}: {error}") from None
    model = build_model(config, target, splits.input_shape)
    chosen, epoch, weights = state.weights(which)
    load_weights(model, chosen, run_dir)
    model.eval()
    return LoadedRun(config, model, splits, epoch, weights, state.epoch, data, note)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], run_dir: str | Path) -> None:
    """``model.load_state_dict(weights)``; RunFolderError when the checkpoint is another model's."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RunFolderError(
            f"{Path(run_dir) / CHECKPOINT} holds weights of another model than its {CONFIG} describes ({first})"
        ) from None
