"""The run folder, the whole interface between training, evaluation and reports, and its typed records.

``<root>/<experiment>/<name>/`` holds ``config.json`` (a ``Config``), ``metrics.jsonl`` (one ``MetricsRow``
per evaluation), ``checkpoint.pt``, ``provenance.json`` (a ``Provenance``: the data read, with content hashes,
and the environment of each training session) and, after evaluation, ``robustness.json`` (a ``Robustness``)
and ``certified.json`` (a ``Certification`` on test images; ``certified_val.json``: one on the validation
split, for choosing a recipe without the test set). This module alone reads and writes them:

- every file is written to a temporary file in the same folder and renamed over the old one, so a crash
  never leaves a half-written file; files get the permissions the umask gives (0644 by default);
- a process that writes a folder holds its lock (``locked``): a second one fails at once, naming the
  holder; the lock dies with its process (``flock``), so a killed run leaves none behind;
- a file that cannot be read raises ``RunFolderError`` naming it, and nothing is changed;
- records carry a ``format`` number; records of format 1 (before regularizer settings) are upgraded
  when read.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import json
import math
import os
import pickle
import secrets
import socket
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import filelock
import numpy as np
import torch

from ..arguments import check_choice
from ..deprecation import moved_names, warn
from .config import Config, upgrade_legacy
from .data import EMBEDDED, DataRecord
from .environment import Environment
from .suite import EvalSettings, describe_attacks

# moved to kernel_reg.builders in 0.2 (importable from here, with a DeprecationWarning, until 0.3)
__getattr__ = moved_names(
    __name__,
    dict.fromkeys(
        ("LoadedRun", "build_model", "load_run", "load_splits", "load_weights", "resolve_device"),
        "kernel_reg.app.builders",
    ),
)

CONFIG, METRICS, CHECKPOINT, ROBUSTNESS, LOCK, WEIGHTS, DIVERGED = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "robustness.json", ".lock", "weights.pt", "diverged.json",
)  # fmt: skip
PROVENANCE, CERTIFIED, CERTIFIED_VAL = "provenance.json", "certified.json", "certified_val.json"
SPLITS = ("test", "val")  # the images a certification is measured on
FORMAT = 2


class RunFolderError(ValueError):
    """A run folder or one of its files is missing, unreadable, locked or not writable; the message
    names it and says what to do. Nothing was changed."""


class DiskFullError(OSError):
    """A record could not be written for want of space; the message names the folder and says that the
    previous version of the file is intact."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then the error it was raised from or during, and so on."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _no_space(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from or during, is "no space left on device"."""
    return any(isinstance(seen, OSError) and seen.errno == errno.ENOSPC for seen in _chain(error))


# ---------------------------------------------------------------------------------------------
# Writing


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder (created with mode 0666 minus the umask, as a
    plain ``open`` would), flushed to disk, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if any(isinstance(seen, KeyboardInterrupt) for seen in _chain(error)):
            # Ctrl-C inside the writer can surface as the writer's own error (torch.save's zip writer raises
            # RuntimeError while closing a half-written archive): the caller must still see the interrupt
            raise KeyboardInterrupt from None
        if _no_space(error):
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise DiskFullError(
                errno.ENOSPC,
                f"{path.parent}: no space left on device while writing {path.name}; {kept}; free "
                "some space and rerun the same command",
            ) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""

    def write(f: IO[bytes]) -> None:
        f.write(text.encode())

    _atomic(Path(path), write)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def check_writable(folder: str | Path, what: str) -> None:
    """RunFolderError unless files can be created in ``folder`` (created if missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _probe(folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise RunFolderError(f"{folder} is not writable ({error.strerror}): {what}") from None


def _probe(folder: Path) -> tuple[int, str]:
    tmp = str(folder / f".write-test.{os.getpid()}.{secrets.token_hex(4)}")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


@contextlib.contextmanager
def locked(run_dir: str | Path, purpose: str, create: bool = False, remedy: str = "") -> Iterator[Path]:
    """Hold the run folder's lock for the block (``create``: make the folder if missing, and remove it
    again if the block wrote nothing there; ``remedy``: what else the user may do when the folder is busy,
    e.g. "choose another --name").

    RunFolderError at once when another process holds it (naming that process) or when the folder is
    not writable."""
    run_dir = Path(run_dir)
    if not create and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is not a run folder: it does not exist")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as error:
        raise RunFolderError(f"{run_dir} is not writable ({error.strerror}); nothing was done") from None
    # filelock's primitive: flock on Unix, a lock on byte 0 on Windows, so the holder is written after it
    if not filelock.lock_descriptor(fd, blocking=False):
        os.lseek(fd, 1, os.SEEK_SET)
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunFolderError(
            f"{run_dir} is in use by {holder}; wait for it to finish" + (f", or {remedy}" if remedy else "")
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"\npid {os.getpid()} on {socket.gethostname()} ({purpose})\n".encode())
        yield run_dir
    finally:
        filelock.unlock_descriptor(fd)
        os.close(fd)
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:  # a run that failed before writing
            (run_dir / LOCK).unlink()
            run_dir.rmdir()


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class MetricsRow:
    """One evaluation during training: losses and accuracies (val_acc None without a validation set),
    the RKHS-norm bracket on the probe batch (its lower bounds None at evaluations that skip them, see
    ``Config.probe_delta``), the learning rate of that epoch's steps, the projection radius when projecting,
    and the cost: seconds per training epoch since the last evaluation, seconds of this evaluation, of which
    ``bracket_seconds`` for the lower bounds."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_acc: float | None
    test_acc: float
    rkhs_lower_grad: float | None
    rkhs_lower_delta: float | None
    rkhs_upper_spectral: float
    seconds_per_epoch: float
    eval_seconds: float | None = None
    tau: float | None = None
    bracket_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MaskingCheck:
    """One gradient-masking check: what it tests, whether it fired, a sentence for people, and the numbers
    behind it (``values``, e.g. {"broken": 0, "survivors": 322, "queries": 1000}) for programs."""

    check: str
    fired: bool
    detail: str
    norm: str | None = None
    eps: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    id: str = ""  # stable, for programs: one of CHECK_IDS (records written before it: derived from ``check``)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", check_id(self.check))


# the checks' stable identifiers, each with a phrase that the sentence of every record of that check holds
CHECK_IDS = {
    "rises-with-eps": "robust accuracy rises with eps",
    "rises-with-budget": "accuracy rises with more steps and restarts",
    "not-converged": "attack not converged",
    "square-beats-gradients": "score-based attack beats the gradient attacks",
    "zero-gradients": "zero input gradients",
    "certified-above-robust": "certified accuracy exceeds robust accuracy",
}


def check_id(sentence: str) -> str:
    """The stable identifier of a check from its sentence; ValueError for a sentence of no known check."""
    found = [key for key, phrase in CHECK_IDS.items() if phrase in sentence]
    if len(found) != 1:
        raise ValueError(f"{sentence!r} is not the sentence of a known masking check ({', '.join(CHECK_IDS)})")
    return found[0]


def pack_bits(flags: torch.Tensor | np.ndarray) -> str:
    """A bool vector (one flag per test image, in order) as base64 of its bits, 8 images a byte."""
    array = flags.detach().cpu().numpy() if isinstance(flags, torch.Tensor) else np.asarray(flags)
    return base64.b64encode(np.packbits(array.astype(bool)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The first ``n`` flags of ``pack_bits``' text, a bool array."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=n).astype(bool)


def _data_from(values: dict[str, Any]) -> None:
    if values.get("data") is not None:
        values["data"] = DataRecord.from_dict(values["data"])


@dataclass(frozen=True)
class Robustness:
    """What ``kernel-reg evaluate`` measured on the first ``n`` test images: clean accuracy, robust accuracy
    per radius (keys: ``eps_key`` of the radius; linf radii in [0, 1] units), certified l2 accuracy from
    the Lipschitz upper bound (None with a note when the model has a layer without a bound), the attacks
    used, the accuracies under twice the budget at the checked radii, the gradient-masking checks, and
    which weights (``weights``: best-validation or last, of ``epoch``, the run trained to ``trained_to``)
    under which ``settings``."""

    clean: float
    n: int
    l2: dict[str, float]
    linf: dict[str, float]
    lipschitz_bound: float | None
    certified_l2: dict[str, float] | None
    attacks: dict[str, str]
    settings: EvalSettings
    doubled: dict[str, dict[str, float]] = field(default_factory=dict)
    masking_checks: tuple[MaskingCheck, ...] | None = None
    certified_note: str | None = None
    epoch: int | None = None
    weights: str | None = None
    trained_to: int | None = None  # the run's last trained epoch when it was evaluated
    lipschitz_lower: float | None = None  # the largest Jacobian norm found: L is at least this
    data: DataRecord | None = None  # the data evaluated on (None: evaluated before data records)
    data_override: str | None = None  # why it was evaluated on data other than the run's record
    # per test image, in order (``pack_bits``): "clean" correct, "l2/<eps_key>" / "linf/<eps_key>" unbroken by
    # the attack, "certified_l2/<eps_key>" certified; what ``kernel-reg verify`` compares on the first N images
    per_example: dict[str, str] = field(default_factory=dict)
    # what computed it (``environment.machine``): a resumed journal's machines first, then the one that finished
    # it (and computed the certificates); empty in records made before 0.2.4
    machines: tuple[str, ...] = ()

    @property
    def certified_rule(self) -> str:
        """ "pairwise" (f_y - f_j > K[y, j] eps for every j, today's) or "global" (margin > sqrt(2) L eps,
        the rule of records written before per-pair certificates), as ``attacks["certified_l2"]`` says."""
        return "global" if self.attacks.get("certified_l2", "").startswith("margin > sqrt(2)") else "pairwise"

    def described(self) -> dict[str, str]:
        """``attacks`` with the robust accuracies' attacks worded from ``settings`` by today's
        ``suite.describe_attacks``: records written before it named APGD-T's target classes (0.2.2) say
        how many were used, like newer ones."""
        return {key: describe_attacks(key, self.settings) if key in ("l2", "linf") else text
                for key, text in self.attacks.items()}  # fmt: skip

    @property
    def suspicious(self) -> list[str]:
        """The names of the checks that fired, each once."""
        return list(dict.fromkeys(c.check for c in self.masking_checks or () if c.fired))

    def check(self, name: str, norm: str | None = None) -> MaskingCheck | None:
        """The first check whose identifier (``CHECK_IDS``) or sentence is ``name`` (for ``norm``)."""
        return next((c for c in self.masking_checks or () if name in (c.id, c.check) and norm in (None, c.norm)), None)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["suspicious"] = self.suspicious
        return {"format": FORMAT, **values}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Robustness:
        values = dict(values)
        values.pop("format", None)
        values.pop("suspicious", None)
        checks = values.get("masking_checks")
        if checks is not None:
            values["masking_checks"] = tuple(MaskingCheck(**c) for c in checks)
        values["settings"] = EvalSettings.from_dict(values["settings"])
        values["machines"] = tuple(values.get("machines", ()))
        _data_from(values)
        return cls(**values)


@dataclass(frozen=True)
class Certification:
    """What ``kernel-reg certify`` measured on the first ``n`` images of ``split`` ("test", or "val": the
    run's validation examples, carved from the training pool), without attacks: clean accuracy,
    the Lipschitz bound L of the model, and the certified l2 accuracy per radius by the per-pair rule
    (f_y - f_j > K[y, j] eps for every j) and by the global one (f_y - max_j f_j > sqrt(2) L eps), with
    per-image flags (``pack_bits``: "clean", "pairwise/<eps_key>", "global/<eps_key>")."""

    n: int
    clean: float
    lipschitz_bound: float
    pairwise: dict[str, float]
    global_rule: dict[str, float]
    weights: str
    epoch: int
    data: DataRecord | None = None
    data_override: str | None = None
    per_example: dict[str, str] = field(default_factory=dict)
    split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Certification:
        values = dict(values)
        values.pop("format", None)
        _data_from(values)
        return cls(**values)


@dataclass(frozen=True)
class Provenance:
    """Where a run's numbers come from: the data it was trained on (``DataRecord``) and the environment of
    each training session, the first and every resume; ``note``: how a record made after the fact was
    made (the published runs trained before provenance records)."""

    data: DataRecord | None
    trainings: tuple[Environment, ...] = ()
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "data": None if self.data is None else self.data.to_dict(),
            "trainings": [e.to_dict() for e in self.trainings],
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Provenance:
        values = dict(values)
        values.pop("format", None)
        _data_from(values)
        values["trainings"] = tuple(Environment.from_dict(e) for e in values.get("trainings", ()))
        return cls(**values)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); the file is damaged") from None


def run_path(config: Config) -> Path:
    return Path(config.root) / config.experiment / config.name


def write_config(run_dir: Path, config: Config) -> None:
    """``config.json``, without paths of this machine: ``data_dir`` kept only as "embedded" (a data set of
    its own; where this machine keeps the full set is not what the run computes, which ``provenance.json``'s
    hashes record), an absolute ``root`` left out (the run folder is where it is; read back as the default)."""
    values = {"format": FORMAT, **config.to_dict()}
    values["data_dir"] = EMBEDDED if config.data_dir == EMBEDDED else None
    if Path(config.root).is_absolute():
        del values["root"]
    atomic_write_text(run_dir / CONFIG, json.dumps(values, indent=2, sort_keys=True))


def read_config(run_dir: str | Path) -> Config:
    """The run's ``Config``; a root that ``write_config`` left out (an absolute one) is the folder that holds
    ``<experiment>/<name>`` of this run folder."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise RunFolderError(f"{run_dir} does not exist (a run folder is <root>/<experiment>/<name>)")
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    values = _read_json(path)
    if not isinstance(values, dict):
        raise RunFolderError(f"{path} does not hold a configuration (a JSON object)")
    try:
        if values.pop("format", 1) == 1:
            values = upgrade_legacy(values)
        if "root" not in values and isinstance(values.get("name"), str):
            depth = 1 + len(Path(values["name"]).parts)  # <root> / <experiment> / <name, maybe a/b>
            values["root"] = str(Path(run_dir).absolute().parents[depth - 1])
        return Config.from_dict(values)
    except (TypeError, ValueError) as error:
        raise RunFolderError(f"{path} is not a valid configuration: {error}") from None


def write_metrics(run_dir: Path, metrics: list[MetricsRow]) -> None:
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(m.to_dict()) + "\n" for m in metrics))


def read_metrics(run_dir: str | Path) -> list[MetricsRow]:
    """The metrics rows of a run folder ([] when it has none yet)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = MetricsRow(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as error:
            reason = f"{path}, line {number}, is not a metrics row ({error})"
            raise RunFolderError(f"{reason}; the file is damaged") from None
        for name in ("train_acc", "val_acc", "test_acc"):  # a loss may diverge; an accuracy is a share
            value = getattr(row, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise RunFolderError(f"{path}, line {number}: {name} is {value!r}, not an accuracy in [0, 1]; "
                                     "the file is damaged")  # fmt: skip
        rows.append(row)
    return rows


def write_robustness(run_dir: Path, result: Robustness) -> None:
    atomic_write_text(run_dir / ROBUSTNESS, json.dumps(result.to_dict(), indent=2))


def read_robustness(run_dir: str | Path) -> Robustness | None:
    """The evaluation of a run folder, or None when it has not been evaluated."""

    def upgrade(values: dict[str, Any]) -> None:
        if values.get("format", 1) == 1 and values.get("weights") == "best":  # said 'best' even without validation
            values["weights"] = "best-validation" if read_config(run_dir).n_val > 0 else "last"

    return _read_record(run_dir, ROBUSTNESS, Robustness, "evaluation", upgrade)


def _read_record(
    run_dir: str | Path, name: str, kind: Any, what: str, upgrade: Callable[[dict[str, Any]], None] | None = None
) -> Any:
    """``kind.from_dict`` of the JSON file ``name`` of the run folder (``upgrade`` first changes older
    records in place), None when the file is missing; RunFolderError naming it when it is not one."""
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    values = _read_json(path)
    try:
        if not isinstance(values, dict):
            raise TypeError("not a JSON object")
        if upgrade is not None:
            upgrade(values)
        return kind.from_dict(values)
    except (TypeError, ValueError) as error:
        raise RunFolderError(f"{path} is not a valid {what} record: {error}") from None


def certification_file(split: str) -> str:
    """The record of a certification on ``split``: certified.json (test images) or certified_val.json."""
    check_choice("split", split, SPLITS)
    return CERTIFIED if split == "test" else CERTIFIED_VAL


def write_certification(run_dir: Path, result: Certification) -> None:
    atomic_write_text(run_dir / certification_file(result.split), json.dumps(result.to_dict(), indent=2))


def read_certification(run_dir: str | Path, split: str = "test") -> Certification | None:
    """The certification of a run folder on ``split`` ("test" or "val"), or None when it has none."""
    name = certification_file(split)
    result = _read_record(run_dir, name, Certification, "certification")
    if result is not None and result.split != split:
        raise RunFolderError(
            f"{Path(run_dir) / name} records a certification on the {result.split!r} split, not {split!r}"
        )
    return result


def write_provenance(run_dir: Path, record: Provenance) -> None:
    atomic_write_text(run_dir / PROVENANCE, json.dumps(record.to_dict(), indent=2))


def read_provenance(run_dir: str | Path) -> Provenance | None:
    """The provenance of a run folder, or None for a run trained before provenance records."""
    return _read_record(run_dir, PROVENANCE, Provenance, "provenance")


def write_divergence(run_dir: Path, reason: str) -> None:
    """Record that the run diverged (``reason``: TrainingDiverged's message), so that sweeps skip it and
    reports say so; training the run again removes the record first."""
    atomic_write_text(run_dir / DIVERGED, json.dumps({"reason": reason}, indent=2))


def clear_divergence(run_dir: Path) -> None:
    (run_dir / DIVERGED).unlink(missing_ok=True)


def read_divergence(run_dir: str | Path) -> str | None:
    """Why the run diverged, or None when it has not."""
    path = Path(run_dir) / DIVERGED
    if not path.is_file():
        return None
    values = _read_json(path)
    if not isinstance(values, dict) or not isinstance(values.get("reason"), str):
        raise RunFolderError(f"{path} is not a valid divergence record (a JSON object with a 'reason' string)")
    return values["reason"]


StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class BestWeights:
    """The weights of best validation accuracy so far, of ``epoch``."""

    epoch: int
    val_acc: float
    model: StateDict


@dataclass(frozen=True)
class Checkpoint:
    """What ``checkpoint.pt`` holds, the training state after ``epoch`` (the model's weights, the best ones
    so far, the metrics rows, the optimizer's, scheduler's and penalties' state, the RNG states), or, read
    from a published ``weights.pt``, the weights alone (the rest left empty, ``unfinished``: "epoch k of n"
    for a run not trained to its last epoch). Written as a plain dict of tensors and containers, which
    ``torch.load(weights_only=True)`` reads."""

    model: StateDict
    epoch: int
    best: BestWeights | None = None
    metrics: tuple[MetricsRow, ...] = ()
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    penalties: dict[str, Any] = field(default_factory=dict)
    unfinished: str | None = None

    def weights(self, which: str) -> tuple[StateDict, int, str]:
        """(weights, their epoch, "best-validation" or "last"): the best ones for ``which="best"`` when the
        run has them (a run without a validation set has not), else the last."""
        if which == "best" and self.best is not None:
            return self.best.model, self.best.epoch, "best-validation"
        return self.model, self.epoch, "last"

    def __getitem__(self, key: str) -> Any:
        """The dict interface of 0.2.0, when ``read_checkpoint`` returned the stored dict (deprecated)."""
        warn("read_checkpoint() returns a Checkpoint since 0.2.1: read its attributes (state.model, "
             "state.best.model, state.epoch), not its keys")  # fmt: skip
        return {**self.to_dict(), "unfinished": self.unfinished}[key]

    def to_dict(self) -> dict[str, Any]:
        """The training state as ``checkpoint.pt`` stores it."""
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, epoch=self.epoch,
                    metrics=[m.to_dict() for m in self.metrics], best=_best_dict(self.best), rng=self.rng,
                    penalties=self.penalties)  # fmt: skip

    def published(self, unfinished: str | None) -> dict[str, Any]:
        """The weights alone, as ``weights.pt`` stores them (no optimizer state)."""
        return {"format": FORMAT, "model": self.model, "epoch": self.epoch, "best": _best_dict(self.best),
                "unfinished": unfinished}  # fmt: skip

    @classmethod
    def from_dict(cls, values: Any, path: Path) -> Checkpoint:
        """The checkpoint or weights file ``path`` held ``values``; RunFolderError naming what is missing."""
        if not isinstance(values, dict) or not {"model", "epoch"} <= set(values):
            raise RunFolderError(f"{path} is not a kernel-reg checkpoint (no model weights and epoch)")
        best = values.get("best")
        try:
            return cls(
                model=values["model"], epoch=int(values["epoch"]),
                best=None if best is None else BestWeights(int(best["epoch"]), float(best["val_acc"]), best["model"]),
                metrics=tuple(MetricsRow(**row) for row in values.get("metrics", ())),
                optimizer=values.get("optimizer"), scheduler=values.get("scheduler"), rng=values.get("rng"),
                penalties=values.get("penalties") or {}, unfinished=values.get("unfinished"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise RunFolderError(f"{path} is not a kernel-reg checkpoint ({type(error).__name__}: {error})") from None


def _best_dict(best: BestWeights | None) -> dict[str, Any] | None:
    return None if best is None else {"epoch": best.epoch, "val_acc": best.val_acc, "model": best.model}


def write_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    """``checkpoint.pt``, written atomically."""
    atomic_torch_save(checkpoint.to_dict(), Path(run_dir) / CHECKPOINT)


def saved_weights(run_dir: str | Path) -> Path | None:
    """Where a run folder's weights are: ``checkpoint.pt`` where it trained, else its published ``weights.pt``;
    None when it holds neither."""
    return next((Path(run_dir) / f for f in (CHECKPOINT, WEIGHTS) if (Path(run_dir) / f).is_file()), None)


def read_checkpoint(run_dir: str | Path, device: torch.device | str = "cpu", weights: bool = False) -> Checkpoint:
    """The training state of a run folder; RunFolderError when it is missing, truncated or corrupt.

    ``weights``: a folder without ``checkpoint.pt`` may give its published ``weights.pt`` instead (the last
    and the best weights with their epochs, no optimizer state; see ``export_weights``)."""
    path = Path(run_dir) / CHECKPOINT
    if weights:
        path = saved_weights(run_dir) or path
    if not path.is_file():
        published = f" (nor the published weights, {WEIGHTS})" if weights else ""
        raise RunFolderError(f"{run_dir} has no {CHECKPOINT}{published}: train it first")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        remedy = (
            "copy the published file again (in a clone of the repository: `git checkout -- PATH`)"
            if path.name == WEIGHTS
            else "`kernel-reg train --fresh ...` sets the run folder aside and starts over"
        )
        raise RunFolderError(
            f"{path} is unreadable ({reason}): it is truncated or corrupt. Nothing was changed; {remedy}"
        ) from None
    return Checkpoint.from_dict(state, path)


def export_weights(run_dir: str | Path) -> Path:
    """Write ``weights.pt``, the weights of a trained run without its optimizer state (the last ones and
    those of best validation accuracy, with their epochs, and ``unfinished``: "epoch k of n" for a run not
    trained to its last epoch, else None): what to publish, a few hundred KB for a width-16 VGG-5;
    ``kernel-reg evaluate`` reads it when the folder has no checkpoint. Holds the run folder's lock (a
    folder that ``train`` holds is refused, RunFolderError naming the holder)."""
    with locked(run_dir, "kernel-reg export"):
        state = read_checkpoint(run_dir)
        unfinished = unfinished_epochs(read_config(run_dir), state.epoch)
        atomic_torch_save(state.published(unfinished), Path(run_dir) / WEIGHTS)
    return Path(run_dir) / WEIGHTS


def unfinished_epochs(config: Config, epoch: int) -> str | None:
    """ "epoch k of n" when the run's last trained epoch ``epoch`` is not its last one, else None."""
    return None if epoch >= config.num_epochs - 1 else f"epoch {epoch} of {config.num_epochs}"


def check_not_nested(run_dir: Path, top: Path) -> None:
    """RunFolderError when ``run_dir`` lies inside another run folder below ``top``, or holds one: a run
    set aside or resumed would carry the other with it."""
    for folder in run_dir.parents:
        if folder == top or top not in folder.parents:
            break
        if (folder / CONFIG).is_file():
            raise RunFolderError(f"{run_dir} would lie inside the run folder {folder}; choose a name outside it")
    if run_dir.is_dir():
        inner = next((p.parent for p in run_dir.rglob(CONFIG) if p.parent != run_dir), None)
        if inner is not None:
            raise RunFolderError(f"{run_dir} holds another run folder, {inner}; choose another name")


def finite_or_none(value: float) -> float | None:
    """``value``, or None for NaN (an empty set's accuracy), so that records stay valid JSON."""
    return None if math.isnan(value) else value


def trained_to_end(config: Config, metrics: list[MetricsRow]) -> bool:
    """Whether a run's metrics reach its last epoch (num_epochs - 1)."""
    return bool(metrics) and metrics[-1].epoch == config.num_epochs - 1
