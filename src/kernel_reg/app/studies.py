"""The runs of a report and how they are compared: run summaries read from run folders, studies (one
experiment under one setting of everything but the regularization), and the selection of each method's
setting by validation accuracy (runs pooled as seeds only when their configurations differ in seed fields
alone)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    SEED_FIELDS,
    Config,
    format_value,
    hyperparameter_text,
    hyperparameters,
    identity,
    method_label,
    preset_config,
    setting_key,
    short_hash,
)
from .data import DataRecord
from .rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    ROBUSTNESS,
    MetricsRow,
    Robustness,
    RunFolderError,
    read_config,
    read_divergence,
    read_metrics,
    read_provenance,
    read_robustness,
    trained_to_end,
)

Warn = Callable[[str], None]


@dataclass
class RunSummary:
    path: Path
    config: Config
    metrics: list[MetricsRow]
    robustness: Robustness | None
    name: str = ""  # the folder relative to the report's root
    divergence: str | None = None  # why its training diverged (``rundir.read_divergence``), if it did
    data: DataRecord | None = None  # the data it was trained on (None: trained before data records)

    @property
    def data_key(self) -> str | None:
        """What tells the run's data apart from other data: the content hashes, not where the files were."""
        return None if self.data is None else f"{self.data.train_sha256[:12]}/{self.data.test_sha256[:12]}"

    @property
    def method(self) -> str:
        return method_label(self.config)

    @property
    def setting(self) -> str:
        """Its method and hyperparameters, e.g. 'pgd-l2+project-sn (epsilon=1, tau=1.5)'."""
        params = hyperparameter_text(self.config)
        return f"{self.method} ({params})" if params else self.method

    @property
    def finished(self) -> bool:
        return trained_to_end(self.config, self.metrics)

    @property
    def training_seconds(self) -> float:
        """What training the run costs, from its own timing (``metrics.jsonl``): the median over its
        evaluations of the seconds per epoch, times the epochs trained, plus the median evaluation times the
        evaluations. Medians, because a process stopped for a while (``kill -STOP``, a suspended machine)
        records the pause as one long epoch."""
        if not self.metrics:
            return 0.0
        per_epoch = statistics.median(row.seconds_per_epoch for row in self.metrics)
        per_evaluation = statistics.median(row.eval_seconds or 0.0 for row in self.metrics)
        return per_epoch * (self.metrics[-1].epoch + 1) + per_evaluation * len(self.metrics)

    @property
    def last_stage(self) -> int:
        """The first epoch of the last learning-rate stage (the rate is multiplied by ``sched_gamma`` after
        every ``sched_step`` epochs, epochs counted from 0); 0 when it never changes."""
        if self.config.sched_gamma == 1:
            return 0
        return (self.config.num_epochs - 1) // self.config.sched_step * self.config.sched_step

    @property
    def last_stage_loss_change(self) -> float | None:
        """How much the training loss still moved at the final learning rate: 100 (L_last - L_first) / L_first
        (%), from the first evaluation in the last learning-rate stage (made after its first epoch, or later
        when evaluations do not fall on its start) to the last evaluation. Near 0 once the loss no longer
        falls (a run stuck at chance too); a loss falling towards 0 on a fitted training set keeps a steady
        relative fall. The loss is the clean training cross-entropy, not the regularized objective. None where
        it cannot be measured: fewer than two evaluations in that stage, a loss that is not finite (a loss may
        diverge), or a first loss of 0."""
        stage = [row for row in self.metrics if row.epoch >= self.last_stage]
        if len(stage) < 2:
            return None
        first, last = stage[0].train_loss, stage[-1].train_loss
        if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
            return None
        return 100 * (last - first) / first

    @property
    def best(self) -> MetricsRow:
        """The evaluation of best validation accuracy (ties: the earliest), or the last one."""
        with_val = [m for m in self.metrics if m.val_acc is not None]
        if not with_val:
            return self.metrics[-1]
        return max(with_val, key=lambda m: (m.val_acc, -m.epoch))


def last_stage_loss_changes(runs: Sequence[RunSummary]) -> list[float] | None:
    """Each run's ``last_stage_loss_change`` (the seeds of one setting), or None when one cannot be measured."""
    changes = [c for run in runs if (c := run.last_stage_loss_change) is not None]
    return changes if len(changes) == len(runs) else None


def run_folders(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (any depth, ``root`` included) with a config.json, but the folders that
    ``--fresh`` set aside (``name.old-<time>``) and hidden ones (``.submitit``), and what lies in them."""
    root = Path(root)

    def set_aside_or_hidden(folder: Path) -> bool:
        return any(part.startswith(".") or ".old-" in part for part in folder.relative_to(root).parts)

    return [path.parent for path in sorted(root.rglob(CONFIG)) if not set_aside_or_hidden(path.parent)]


def collect_runs(root: str | Path, warn: Warn = lambda _: None) -> list[RunSummary]:
    """Every run folder under ``root`` (any depth) that has logged at least one evaluation; folders set
    aside by ``--fresh`` and hidden ones are ignored, damaged ones skipped with a one-line ``warn``."""
    root = Path(root)
    runs = []
    for run_dir in run_folders(root):
        try:
            metrics = read_metrics(run_dir)
            if not metrics:
                if (run_dir / CHECKPOINT).is_file():
                    missing = f"it has a {CHECKPOINT} but no metrics rows ({METRICS} is missing or empty)"
                    warn(f"kernel-reg report: skipping {run_dir}: {missing}; `kernel-reg train` rewrites them")
                continue
            config = read_config(run_dir)
            name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
            robustness = read_robustness(run_dir)
            if robustness is not None and robustness.trained_to not in (None, metrics[-1].epoch):
                warn(f"kernel-reg report: {run_dir}: {ROBUSTNESS} evaluated the run trained to epoch "
                     f"{robustness.trained_to}, it has been trained since (epoch {metrics[-1].epoch}): its "
                     "robustness is left out; evaluate it again")  # fmt: skip
                robustness = None
            provenance = read_provenance(run_dir)
            data = None if provenance is None else provenance.data
            runs.append(RunSummary(run_dir, config, metrics, robustness, name, read_divergence(run_dir), data))
        except RunFolderError as error:
            warn(f"kernel-reg report: skipping {run_dir}: {error}")
    return runs


_REGULARIZATION = ("regs", "wd")


def _context(config: Config) -> dict[str, object]:
    """What a run shares with the runs it is compared with: its setting without the regularization."""
    return {k: v for k, v in identity(config, SEED_FIELDS + _REGULARIZATION).items() if "." not in k}


@dataclass
class Study:
    """The runs of one experiment under one setting of everything but the regularization: they are
    compared in one table. ``differs``: the context's values that differ from the experiment's preset."""

    experiment: str
    differs: dict[str, object]
    runs: list[RunSummary]

    @property
    def title(self) -> str:
        changed = ", ".join(f"{k}={format_value(v)}" for k, v in self.differs.items())
        return f"{self.experiment} ({changed})" if changed else self.experiment

    @property
    def slug(self) -> str:
        return self.experiment + (
            "_" + short_hash(json.dumps(self.differs, sort_keys=True, default=str)) if self.differs else ""
        )


def studies(runs: list[RunSummary]) -> list[Study]:
    """The runs grouped by experiment, context and data: runs of different experiments, training-set sizes,
    schedules, widths, ... or trained on different data (content hashes) are never in one table. The
    data enter a study's title only where two studies differ in them alone."""
    grouped: dict[tuple[str, str, str], list[RunSummary]] = defaultdict(list)
    for run in runs:
        text = json.dumps(_context(run.config), sort_keys=True, default=str)
        grouped[(run.config.experiment, text, run.data_key or "")].append(run)
    shared: dict[tuple[str, str], int] = defaultdict(int)
    for experiment, text, _ in grouped:
        shared[(experiment, text)] += 1
    result = []
    for (experiment, context_key, data_key), members in sorted(grouped.items()):
        preset = _context(preset_config(experiment))
        context = _context(members[0].config)
        differs = {k: v for k, v in context.items() if preset.get(k) != v}
        if shared[(experiment, context_key)] > 1:
            differs["data"] = data_key or "unrecorded"
        result.append(Study(experiment, differs, members))
    return result


def unaugmented_by_epochs(found: list[Study], experiment: str) -> dict[int, Study]:
    """The studies of ``experiment`` without data augmentation, by their number of training epochs (the
    one of fewest epochs is the main study, longer ones are controls); ValueError when two share a length."""
    plain: dict[int, Study] = {}
    for study in found:
        if study.experiment == experiment and not study.differs.get("aug"):
            length = study.runs[0].config.num_epochs
            if length in plain:
                raise ValueError(f"two studies of {experiment} without augmentation at {length} epochs: "
                                 f"{plain[length].title}; {study.title}")  # fmt: skip
            plain[length] = study
    return plain


def main_study(plain: Mapping[int, Study]) -> Study | None:
    """The main study among ``unaugmented_by_epochs``'s: the one of fewest epochs (a longer one is a control
    of training length); None when there is none."""
    return plain[min(plain)] if plain else None


@dataclass
class Selection:
    """The runs of a study by setting (seeds pooled: whole configurations equal but for seed fields; a
    configuration found twice counted once), and per method the setting of best mean validation accuracy."""

    settings: dict[str, list[RunSummary]]  # setting_key -> runs (its seeds)
    chosen: dict[str, str]  # method -> the selected setting_key
    duplicates: list[str]

    def of(self, method: str) -> list[RunSummary]:
        return self.settings[self.chosen[method]]

    def family(self, method: str) -> list[list[RunSummary]]:
        """The settings tried for ``method``, each a list of seeds, in ``setting_order``."""
        return family(self.settings, method)


def family(settings: dict[str, list[RunSummary]], method: str) -> list[list[RunSummary]]:
    """The settings of ``method`` among ``settings`` (setting_key -> its seeds), in ``setting_order``."""
    members = [runs for runs in settings.values() if runs[0].method == method]
    return sorted(members, key=lambda runs: setting_order(runs[0].config))


def setting_order(config: Config) -> list[tuple[str, tuple[int, float, str]]]:
    """A sort key that lists the settings of a method by their hyperparameters, numbers in numeric order
    (1e-05 before 0.1, which a text order would put after it)."""
    values = sorted(hyperparameters(config).items())
    return [(k, (0, v, "") if isinstance(v, int | float) else (1, 0.0, str(v))) for k, v in values]


def bracket(selection: Selection, method: str, diverged: Sequence[RunSummary] = ()) -> str:
    """Whether ``method``'s selected setting is an interior point of its grid: along each numeric
    hyperparameter, among the settings equal to the selected one in everything else, is its value the
    lowest or the highest tried? A run in ``diverged`` (same method and line) beyond the edge closes it:
    the largest stable strength is as far as the grid can go. '-' for a single setting."""
    chosen = hyperparameters(selection.of(method)[0].config)
    tried = [hyperparameters(runs[0].config) for runs in selection.family(method)]
    failed = [hyperparameters(r.config) for r in diverged if r.method == method]
    notes, lines = [], 0
    for name, value in chosen.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue

        def on_line(values: dict[str, Any], name: str = name) -> bool:
            others = {k: v for k, v in values.items() if k != name}
            return name in values and others == {k: v for k, v in chosen.items() if k != name}

        line = sorted({values[name] for values in tried if on_line(values)})
        if len(line) < 2:
            continue
        lines += 1
        beyond = sorted({values[name] for values in failed if on_line(values)})
        if value == line[-1]:
            above = [format_value(v) for v in beyond if v > value]
            notes.append(f"{name} largest stable ({', '.join(above)} diverged)" if above else f"EDGE: {name} highest")
        elif value == line[0]:
            below = [format_value(v) for v in beyond if v < value]
            notes.append(f"{name} smallest stable ({', '.join(below)} diverged)" if below else f"EDGE: {name} lowest")
    if not lines:
        return "-"
    return "; ".join(notes) or "interior"


def select(runs: list[RunSummary]) -> Selection:
    """Pool the finished runs with a validation accuracy into settings, and select per method (as the
    paper selected the hyperparameters)."""
    settings, duplicates = pool_settings([run for run in runs if run.finished and run.best.val_acc is not None])
    families: dict[str, list[str]] = defaultdict(list)
    for key, members in settings.items():
        families[members[0].method].append(key)
    chosen = {method: _best_setting(keys, settings) for method, keys in families.items()}
    return Selection(dict(settings), chosen, duplicates)


def pool_settings(runs: list[RunSummary]) -> tuple[dict[str, list[RunSummary]], list[str]]:
    """The finished runs by setting (setting_key -> its seeds: configurations equal but for seed fields), and
    what was counted once: a configuration found twice, seeds included, is one sample, not two."""
    settings: dict[str, list[RunSummary]] = defaultdict(list)
    duplicates: list[str] = []
    for run in sorted(runs, key=lambda r: r.name):
        if run.finished:
            same = settings[setting_key(run.config)]
            twin = next((r for r in same if identity(r.config) == identity(run.config)), None)
            if twin is None:
                same.append(run)
            else:
                duplicates.append(f"{run.name} repeats {twin.name} (the same configuration, seeds included)")
    return dict(settings), duplicates


def seed_of(run: RunSummary) -> tuple[int, int]:
    """(training subset, seed) of a run: what pairs it with the runs of other settings."""
    return run.config.shuf_seed, run.config.seed


def _best_setting(keys: list[str], settings: dict[str, list[RunSummary]]) -> str:
    """The setting of best mean validation accuracy over the seeds that every setting of the family ran on
    (when a study selects on one training subset, then runs the selected setting on more, those are not
    compared with the others' single subset); over each setting's own seeds when they share none. Ties:
    the first key."""
    common = set.intersection(*({seed_of(r) for r in settings[key]} for key in keys))

    def score(key: str) -> float:
        return _mean_val([r for r in settings[key] if seed_of(r) in common] or settings[key])

    return max(keys, key=score)


def _mean_val(runs: list[RunSummary]) -> float:
    """Mean best validation accuracy of runs that all have one."""
    return statistics.mean(r.best.val_acc or 0.0 for r in runs)


# Methods in a fixed order, so that a method has the same colour in every figure of every report: the
# ten main ones take tab20's dark shades, the others its light ones.
