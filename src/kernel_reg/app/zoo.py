"""The model index: every published model (a run folder under ``results/`` with ``weights.pt``) with its
architecture, the sha256 of its weights, the data it was trained and evaluated on, its recorded numbers,
the command that trains it and the environment it was trained with; loading a model by name, its weights
checked against the index; and verifying its numbers again on any clone.

``results/models.json`` is generated from the run folders (``kernel-reg models --update``), never edited by
hand; a test regenerates it and compares.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import lipschitz
from .builders import build_model, load_weights, resolve_device
from .data import INPUT_SHAPES, DataMismatchError, DataRecord, data_mismatch, load_dataset
from .environment import SOURCE_TREE, machine
from .metrics import certified_radii, robust_correct, unchanged
from .rundir import (
    CERTIFIED,
    CONFIG,
    ROBUSTNESS,
    WEIGHTS,
    Certification,
    Checkpoint,
    Robustness,
    RunFolderError,
    atomic_write_text,
    read_certification,
    read_config,
    read_provenance,
    read_robustness,
    unpack_bits,
)
from .suite import EvalSettings, build_eval_attack
from .sweep import short_run_name

INDEX = "models.json"
FORMAT = 1
# attacked accuracy is compared within this, on top of one image: the attack's random draws depend on the
# batch it runs in, so a subset of the recorded images is attacked with other draws than the record's
ATTACK_TOLERANCE = 0.01
BOUND_TOLERANCE = 1e-5  # relative, for L: Gram iteration in float32 on another device or thread count


class ZooError(ValueError):
    """A model, index entry, weights file or record that cannot be used; the message names it."""


def default_index() -> Path:
    """``results/models.json`` of the working folder when there is one, else of the repository that
    kernel_reg is imported from."""
    here = Path("results") / INDEX
    return here if here.is_file() else SOURCE_TREE / "results" / INDEX


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One published model of the index (see the module docstring); ``folder`` is relative to the index's
    folder, ``evaluations`` one dict per record (robustness.json, certified.json) with its numbers."""

    name: str
    folder: str
    architecture: dict[str, Any]
    input_shape: tuple[int, ...]
    weights_sha256: str
    weights_bytes: int
    weights: str  # "best-validation" or "last": the weights the numbers were measured with
    epoch: int
    data: DataRecord | None
    evaluations: tuple[dict[str, Any], ...]
    train_command: str
    trained_with: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["input_shape"] = list(self.input_shape)
        values["evaluations"] = list(self.evaluations)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelEntry:
        values = dict(values)
        values["input_shape"] = tuple(values["input_shape"])
        values["evaluations"] = tuple(values["evaluations"])
        if values.get("data") is not None:
            values["data"] = DataRecord.from_dict(values["data"])
        return cls(**values)

    def numbers(self) -> dict[str, float]:
        """Every recorded accuracy, keyed "<record> <measure> [<radius>]", e.g. "certified.json pairwise 0.5"."""
        found: dict[str, float] = {}
        for record in self.evaluations:
            found[f"{record['record']} clean"] = record["clean"]
            for group in ("attacked", "certified"):
                for measure, values in record.get(group, {}).items():
                    found.update({f"{record['record']} {group} {measure} {k}": v for k, v in values.items()})
        return found


def model_name(results: Path, run_dir: Path) -> str:
    """A published model's name: its study folder under ``results`` and its run, the run named by method,
    hyperparameters and seeds alone when it was named by a sweep (the study's shared settings left out)."""
    config = read_config(run_dir)
    study = run_dir.parent.relative_to(results).as_posix()
    return f"{study}/{short_run_name(config) or run_dir.name}"


def _evaluations(run_dir: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    robustness = read_robustness(run_dir)
    if robustness is not None:
        entry: dict[str, Any] = {
            "record": ROBUSTNESS, "n": robustness.n, "images": f"the first {robustness.n} test images",
            "clean": robustness.clean,
            "attacked": {norm: values for norm, values in (("l2", robustness.l2), ("linf", robustness.linf)) if values},
            "attacks": robustness.attacks, "attack_settings": robustness.settings.to_dict(),
        }  # fmt: skip
        if robustness.certified_l2 is not None:
            entry["certified"] = {f"{robustness.certified_rule} l2": robustness.certified_l2}
            entry["lipschitz_bound"] = robustness.lipschitz_bound
        entry["weights"], entry["epoch"] = robustness.weights, robustness.epoch
        found.append(entry)
    certification = read_certification(run_dir)
    if certification is not None:
        found.append({
            "record": CERTIFIED, "n": certification.n, "images": f"the first {certification.n} test images",
            "clean": certification.clean,
            "certified": {"pairwise l2": certification.pairwise, "global l2": certification.global_rule},
            "lipschitz_bound": certification.lipschitz_bound, "weights": certification.weights,
            "epoch": certification.epoch,
        })  # fmt: skip
    return found


def entry_of(results: Path, run_dir: Path, train_command: Callable[[Any], str]) -> ModelEntry:
    """The index entry of the published run folder ``run_dir`` (under ``results``)."""
    config = read_config(run_dir)
    state = _read_weights(run_dir / WEIGHTS, None)
    evaluations = _evaluations(run_dir)
    which = {e["weights"] for e in evaluations if e.get("weights")}
    if len(which) > 1:
        raise ZooError(f"{run_dir}: its records measured different weights ({', '.join(sorted(which))})")
    weights = which.pop() if which else ("best-validation" if state.best is not None else "last")
    _, epoch, _ = state.weights("best" if weights == "best-validation" else "last")
    provenance = read_provenance(run_dir)
    trained_with = None
    if provenance is not None and provenance.trainings:
        first = provenance.trainings[0]
        trained_with = {"package_version": first.package_version, "commit": first.commit, "dirty": first.dirty,
                        "torch": first.torch, "python": first.python, "device": first.device,
                        "threads": first.threads}  # fmt: skip
    architecture = {"builder": config.model, "width": config.width, "activation": config.activation,
                    "normalization": config.normalization, "num_classes": 10}  # fmt: skip
    return ModelEntry(
        name=model_name(results, run_dir),
        folder=run_dir.relative_to(results).as_posix(),
        architecture=architecture,
        input_shape=INPUT_SHAPES[config.dataset],
        weights_sha256=sha256_file(run_dir / WEIGHTS),
        weights_bytes=(run_dir / WEIGHTS).stat().st_size,
        weights=weights,
        epoch=epoch,
        data=None if provenance is None else provenance.data,
        evaluations=tuple(evaluations),
        train_command=train_command(config),
        trained_with=trained_with,
    )


def build_index(results: Path, train_command: Callable[[Any], str]) -> list[ModelEntry]:
    """Every published model under ``results`` (a run folder with ``weights.pt``), by name; ZooError when
    two share a name."""
    entries = [entry_of(results, path.parent, train_command) for path in sorted(results.rglob(WEIGHTS))
               if (path.parent / CONFIG).is_file() and not any(p.startswith(".") for p in path.parts)]  # fmt: skip
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ZooError(f"two published models are named {', '.join(repeated)}; rename one of their folders")
    return sorted(entries, key=lambda e: e.name)


def index_text(entries: Sequence[ModelEntry]) -> str:
    return json.dumps({"format": FORMAT, "models": [e.to_dict() for e in entries]}, indent=1) + "\n"


def write_index(results: Path, train_command: Callable[[Any], str]) -> Path:
    path = results / INDEX
    atomic_write_text(path, index_text(build_index(results, train_command)))
    return path


def read_index(path: Path | None = None) -> list[ModelEntry]:
    """The entries of the model index at ``path`` (default: ``default_index()``)."""
    path = default_index() if path is None else Path(path)
    if not path.is_file():
        raise ZooError(f"no model index at {path}: run from a clone of kernel-reg, or pass --index FILE")
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict) or values.get("format") != FORMAT or not isinstance(values.get("models"), list):
            raise ValueError(f"expected a JSON object with format {FORMAT} and a list of models")
        return [ModelEntry.from_dict(e) for e in values["models"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        reason = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise ZooError(
            f"{path} is not a valid model index ({reason}); a clone's results/models.json is restored by "
            "`git checkout -- results/models.json`, or regenerated by `kernel-reg models --update`"
        ) from None


def find(name_or_folder: str, path: Path | None = None) -> tuple[ModelEntry, Path]:
    """The entry named ``name_or_folder`` (or whose folder it is: relative to the index's folder, or a path
    to the run folder) and the run folder; ZooError listing the known names otherwise."""
    path = default_index() if path is None else Path(path)
    entries = read_index(path)
    results = path.parent
    wanted = name_or_folder.rstrip("/")
    as_folder = Path(wanted).resolve() if Path(wanted).is_dir() else None
    for entry in entries:
        folder = results / entry.folder
        if wanted in (entry.name, entry.folder) or (as_folder is not None and folder.resolve() == as_folder):
            if not (folder / WEIGHTS).is_file():
                raise ZooError(f"{entry.name}: its folder {folder} has no {WEIGHTS}; the index lists a folder that "
                               "is gone (`git checkout -- results` restores a clone's)")  # fmt: skip
            return entry, folder
    names = [e.name for e in entries]
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ZooError(f"no published model named {name_or_folder!r}; {hint}the index ({path}) holds: {', '.join(names)}")


def _read_weights(path: Path, sha256: str | None) -> Checkpoint:
    """The state of a weights file, its sha256 checked first when given; ZooError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ZooError(f"{path} cannot be read ({error.strerror})") from None
    if sha256 is not None:
        found = hashlib.sha256(raw).hexdigest()
        if found != sha256:
            raise ZooError(f"{path} is not the published file: sha256 {found}, the index records {sha256}; "
                           "`git checkout -- PATH` restores it")  # fmt: skip
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file can raise almost anything while unpickling
        raise ZooError(f"{path} is not a readable weights file ({type(error).__name__})") from None
    try:
        return Checkpoint.from_dict(state, path)
    except RunFolderError as error:
        raise ZooError(str(error)) from None


def load(name_or_folder: str, index: Path | None = None, device: str = "cpu") -> nn.Module:
    """The published network ``name_or_folder`` (see ``find``) in eval mode on ``device``, with the weights
    its numbers were measured with, after checking the weights file against the index's sha256. Needs no
    data set; leaves the global random state as it was.

    Example:
        >>> model = load("certified/fmnist_vgg5_h100/orth_m1.0_b512_e36")
        >>> model(torch.rand(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    entry, folder = find(name_or_folder, index)
    return _build(entry, folder, resolve_device(device))


def _build(entry: ModelEntry, folder: Path, device: torch.device) -> nn.Module:
    state = _read_weights(folder / WEIGHTS, entry.weights_sha256)
    chosen, _, _ = state.weights("best" if entry.weights == "best-validation" else "last")
    config = read_config(folder)
    with torch.random.fork_rng(devices=[]):
        model = build_model(config, device, entry.input_shape)
    load_weights(model, chosen, folder)
    return model.eval()


@dataclass(frozen=True)
class Comparison:
    """One recorded number measured again: what, on how many images, recorded and now, and whether they agree."""

    what: str
    n: int
    recorded: float
    now: float
    agrees: bool
    rule: str

    def line(self) -> str:
        verdict = "agrees" if self.agrees else "DIFFERS"
        percent = self.what.startswith(("clean", "attacked", "certified"))
        show = (lambda v: f"{100 * v:.2f}%") if percent else (lambda v: f"{v:.8g}")
        return f"{verdict:8} {self.what} on {self.n} images: recorded {show(self.recorded)}, now {show(self.now)} " \
               f"({self.rule})"  # fmt: skip


def verify(
    name_or_folder: str,
    n_test: int | None = None,
    index: Path | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
    allow_other_data: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> list[Comparison]:
    """Measure a published model's recorded numbers again on the same test images (the first ``n_test`` of
    each record's, default all): clean and certified accuracy must be equal (deterministic), attacked
    accuracy within one image plus ``ATTACK_TOLERANCE``, the Lipschitz bound within ``BOUND_TOLERANCE``
    (relative). Data other than the index records raise DataMismatchError unless ``allow_other_data``."""
    entry, folder = find(name_or_folder, index)
    target = resolve_device(device)
    model = _build(entry, folder, target).requires_grad_(False)  # attacks differentiate inputs only
    config = read_config(folder)
    dataset = load_dataset(config.dataset, data_dir if data_dir is not None else config.data_dir)
    if entry.data is not None:
        note = data_mismatch(entry.data, dataset.record, ("test",))
        if note is not None and not allow_other_data:
            raise DataMismatchError(f"{entry.name}: {note}; pass --data-dir with the folder of the recorded files")
    test_x = torch.from_numpy(dataset.arrays[2]).float().div_(255.0)
    test_y = torch.from_numpy(dataset.arrays[3])
    bounds = lipschitz.lipschitz_bounds(model, entry.input_shape) if any("certified" in r for r in entry.evaluations) \
        else None  # fmt: skip
    found: list[Comparison] = []
    here = machine(target)
    for record in entry.evaluations:
        n = record["n"] if n_test is None else min(n_test, record["n"])
        result = _result(folder, record["record"])
        computed_on = getattr(result, "machines", ())
        if computed_on and here not in computed_on:  # other kernels: an attack may turn on a borderline image
            log(f"note     {record['record']} was computed on {'; '.join(computed_on)}; this machine is {here}")
        check = _Record(record, result.per_example, n, found, log)
        _verify_record(model, check, test_x[:n].to(target), test_y[:n].to(target), bounds)
    return found


def _verify_record(
    model: nn.Module, check: _Record, x: torch.Tensor, y: torch.Tensor, bounds: tuple[float, torch.Tensor] | None
) -> None:
    """The comparisons of one record (``check``) on the images (x, y); ``bounds``: (L, K) of the model."""
    record = check.record
    check.compare("clean accuracy", "clean", record["clean"], partial(robust_correct, model, unchanged, x, y, 500))
    if "certified" in record and bounds is not None:
        bound, pairwise = bounds
        recorded_bound = record["lipschitz_bound"]
        close = abs(bound - recorded_bound) <= BOUND_TOLERANCE * abs(recorded_bound)
        check.add(Comparison(f"Lipschitz bound L ({record['record']})", check.n, recorded_bound, bound, close,
                             f"within {BOUND_TOLERANCE:g} relative"))  # fmt: skip
        for rule, values in record["certified"].items():
            radius = certified_radii(model, x, y, pairwise if rule.startswith("pairwise") else bound, 500)
            prefix = "certified_l2" if record["record"] == ROBUSTNESS else rule.split()[0]
            for k, total in values.items():
                check.compare(f"certified {rule} accuracy at {k}", f"{prefix}/{k}", total,
                              partial(torch.gt, radius, float(k)))  # fmt: skip
    if record.get("attacked"):
        settings = dataclasses.replace(EvalSettings.from_dict(record["attack_settings"]), n_test=check.n)
        generator = settings.generator()
        for norm, values in record["attacked"].items():
            for k, total in values.items():
                attack = build_eval_attack(norm, float(k), settings, 1, generator)
                where = f"{norm} eps {k}"  # the progress bar's label
                check.compare(f"attacked {norm} accuracy at {k}", f"{norm}/{k}", total,
                              partial(robust_correct, model, attack, x, y, settings.batch_size, where),
                              ATTACK_TOLERANCE)  # fmt: skip


@dataclass
class _Record:
    """The comparisons of one record on its first ``n`` images."""

    record: dict[str, Any]
    per_example: dict[str, str]
    n: int
    found: list[Comparison]
    log: Callable[[str], None]

    def compare(
        self, what: str, key: str, total: float, measure: Callable[[], torch.Tensor], tolerance: float = 0.0
    ) -> None:
        """Compare the per-image flags that ``measure`` gives with the record: its flags ``key`` on the first
        n, or its ``total`` when n is all of its images (else nothing is measured); a line to the log."""
        where, n, n_record = f"({self.record['record']})", self.n, self.record["n"]
        if key in self.per_example:
            recorded = float(unpack_bits(self.per_example[key], n).sum()) / n
        elif n == n_record:
            recorded = total
        else:
            self.log(f"skipped  {what} {where}: no per-image record, so only all {n_record} images compare")
            return
        now = float(measure().sum()) / n
        if tolerance:
            rule, agrees = f"within 1 image + {100 * tolerance:g} points", abs(now - recorded) <= tolerance + 1 / n
        else:
            rule, agrees = "equal", round(now * n) == round(recorded * n)
        self.add(Comparison(f"{what} {where}", n, recorded, now, agrees, rule))

    def add(self, comparison: Comparison) -> None:
        self.found.append(comparison)
        self.log(comparison.line())


def _result(folder: Path, record: str) -> Robustness | Certification:
    try:
        result = read_robustness(folder) if record == ROBUSTNESS else read_certification(folder)
    except RunFolderError as error:
        raise ZooError(str(error)) from None
    if result is None:
        raise ZooError(f"{folder / record} is gone; the index lists it (`git checkout -- {folder}` restores it)")
    return result


def table(entries: Sequence[ModelEntry]) -> list[str]:
    """``kernel-reg models``: a line per model with its clean accuracy and certified accuracy (the record on
    the most images; "g" marks the sqrt(2) L rule), its attacked accuracy and the size of its weights."""
    rows = [("name", "clean %", "attacked l2 %", "certified l2 % (g: sqrt(2) L rule)", "weights")]
    for entry in entries:
        clean = max(entry.evaluations, key=lambda e: e["n"], default=None)
        attacked = next((e for e in entry.evaluations if e.get("attacked", {}).get("l2")), None)
        certified = max((e for e in entry.evaluations if "certified" in e), key=lambda e: e["n"], default=None)

        def cells(values: dict[str, float], n: int, mark: str = "") -> str:
            return " ".join(f"{k}:{100 * v:.1f}{mark}" for k, v in values.items()) + f" (n={n})"

        if certified is None:
            certificate = "-"
        else:
            rules = certified["certified"]
            pairwise = "pairwise l2" in rules
            certificate = cells(
                rules["pairwise l2" if pairwise else "global l2"], certified["n"], "" if pairwise else "g"
            )
        rows.append((
            entry.name,
            "-" if clean is None else f"{100 * clean['clean']:.1f} (n={clean['n']})",
            "-" if attacked is None else cells(attacked["attacked"]["l2"], attacked["n"]),
            certificate,
            f"{entry.weights_bytes / 1e6:.2f} MB",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
