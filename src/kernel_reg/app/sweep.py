"""Sweeps: a grid of runs, each in its own run folder, executed with submitit (local processes by
default, Slurm on a cluster). A sweep is resumable: finished runs are skipped, the others resume from
their checkpoints.

A grid is ``key=v1,v2 key2=w1`` (the product of the listed values) over any config field (``lr``,
``width``, ``n_train``, ...), ``reg=a+b`` combining regularizers (``reg=none`` for none), and
regularizer hyperparameters by name (``lmbda``, ``epsilon``: in every selected regularizer that takes it)
or qualified (``gradient-penalty.lmbda``). A grid file (JSON or YAML) holds a list of such mappings, e.g.
``[{"reg": ["gradient-penalty"], "lmbda": [0.01, 0.1, 1]}, {"reg": ["none"]}]``.

Each run is named by what it is (``run_name``, a function of its configuration alone): the method, its
hyperparameters, every other field that differs from the preset and the subset seed, e.g.
``gradient-penalty_lmbda0.1_lr0.01_width16_s0`` (a short hash of those fields where that gets long). Two
grid points never share a folder: a sweep whose names would collide is refused before anything runs.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import regularizers
from .config import (
    ADAM_LR,
    EXECUTION_FIELDS,
    SEED_FIELDS,
    Config,
    conflicts,
    field_types,
    format_value,
    hyperparameters,
    identity,
    method_label,
    parse_value,
    preset_config,
    short_hash,
)
from .evaluation import evaluate_run
from .extras import require
from .rundir import DIVERGED, RunFolderError, read_divergence, read_metrics, read_robustness, run_path, trained_to_end
from .signals import Interrupted, forwarded
from .suite import EvalSettings

Grid = dict[str, list[Any]]


# keys a grid cannot set: where runs execute and their names are the sweep's, the experiment's preset
# decides the other defaults (one sweep per experiment), and --seeds sets the subset seeds
NOT_SWEPT = {
    **{key: "it is where or under which name runs execute: give it to the sweep itself" for key in EXECUTION_FIELDS},
    "experiment": "a preset sets the defaults of every other field: run one sweep per --experiment",
    "shuf_seed": "--seeds N sets the training-subset seeds 0..N-1 (--seeds A-B: A..B)",
}


def parse_grid(text: str) -> Grid:
    """``'reg=gradient-penalty lmbda=0.01,0.1'`` -> {"regs": [("gradient-penalty",)], "lmbda": [0.01, 0.1]}."""
    grid: dict[str, Any] = {}
    for item in text.split():
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"grid entries are key=v1,v2,...; got {item!r}")
        if key in grid:
            raise ValueError(f"{key} is given twice in the grid {text!r}; list its values once: {key}=v1,v2")
        grid[key] = values.split(",")
    return normalize_grid(grid)


def normalize_grid(grid: Mapping[str, Any]) -> Grid:
    """Typed values ("reg" -> "regs" tuples of names); ValueError naming an unknown key, a key a grid cannot
    set, a key without values or a bad value."""
    typed: Grid = {}
    if {"reg", "regs"} <= set(grid):
        raise ValueError("give the regularizers once, as reg (or regs)")
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ValueError(f"{key} has no values; list at least one")
        if key in NOT_SWEPT:
            raise ValueError(f"{key} cannot be a grid key: {NOT_SWEPT[key]}")
        if key in ("reg", "regs"):
            typed["regs"] = [_regs(v) for v in values]
        else:
            typed[key] = [parse_value(key, v) if isinstance(v, str) else v for v in values]
    return typed


def _regs(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return () if value in ("none", "") else tuple(str(value).split("+"))


def load_grid_file(path: str | Path) -> list[Grid]:
    """Grids from a JSON or YAML file: one mapping or a list of them."""
    is_yaml = str(path).endswith((".yaml", ".yml"))
    yaml = require("yaml", "sweep", "a YAML grid file") if is_yaml else None
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text file ({error.reason}); a grid file is JSON or YAML") from None
    errors: tuple[type[Exception], ...] = (json.JSONDecodeError,) if yaml is None else (yaml.YAMLError,)
    try:
        data = json.loads(text) if yaml is None else yaml.safe_load(text)
    except errors as error:
        kind = "YAML" if is_yaml else "JSON"
        where = str(error).replace("\n", " ")
        raise ValueError(f"{path} is not valid {kind}: {where}") from None
    grids = data if isinstance(data, list) else [data]
    if not all(isinstance(g, dict) for g in grids):
        raise ValueError(f"{path} must hold a mapping of key: [values] or a list of them")
    return [normalize_grid(g) for g in grids]


def _token(key: str, value: Any) -> str | None:
    """'lr0.01' for a run name; None when the value does not make a plain folder-name token."""
    text = f"{key}{format_value(value)}"
    return text if all(c.isalnum() or c in "._+-=" for c in text) else None


MAX_OTHERS = 60  # characters of the other fields' tokens before they become a hash


AUG_FIELDS = ("aug", "aug_transforms")


def _augmentation(config: Config, preset: Config) -> list[str]:
    """The augmentation, shown where it differs from the preset's: 'aug-crop+deform', 'aug' (the data set's
    own), 'noaug'."""
    if (config.aug, config.aug_transforms) == (preset.aug, preset.aug_transforms) or (
        not config.aug and not preset.aug
    ):
        return []
    if not config.aug:
        return ["noaug"]
    return ["aug" if config.aug_transforms == "auto" else f"aug-{config.aug_transforms}"]


def _name_parts(config: Config) -> tuple[list[str], dict[str, Any], list[str]]:
    """(method and hyperparameter tokens, the other fields that differ from the preset, seed tokens)."""
    preset = preset_config(config.experiment).replace(regs=config.regs)
    now, base = identity(config), identity(preset)
    shown = hyperparameters(config)
    head = [method_label(config)] + [f"{k}{format_value(v)}" for k, v in shown.items()] + _augmentation(config, preset)
    seeds = [f"s{config.shuf_seed}"] + ([f"seed{config.seed}"] if config.seed != preset.seed else [])
    others = {
        k: v
        for k, v in now.items()
        if v != base.get(k) and k not in ("regs", *SEED_FIELDS, *AUG_FIELDS, *shown) and "." not in k
    }
    return head, others, seeds


def run_name(config: Config) -> str:
    """A run folder's name, a function of the run's configuration alone: method, hyperparameters, every
    other field that differs from the preset, ``s<shuf_seed>``; when that is too long or a value is not a
    plain token, the other fields become ``h<hash>`` of their values (alike for the runs of one sweep,
    whose other fields are its own flags)."""
    head, others, seeds = _name_parts(config)
    tokens = [_token(k, v) for k, v in others.items()]
    plain = [t for t in tokens if t is not None]
    if len(plain) < len(tokens) or len("_".join(plain)) > MAX_OTHERS:
        return "_".join(head + seeds + ["h" + short_hash(json.dumps(others, sort_keys=True, default=str))])
    return "_".join(head + plain + seeds)


def short_run_name(config: Config) -> str | None:
    """For a run named by a sweep (``run_name``), the name without the fields its sweep shares (method,
    hyperparameters and seeds alone); None for a run named otherwise."""
    if config.name != run_name(config):
        return None
    head, _, seeds = _name_parts(config)
    return "_".join(head + seeds)


def parse_seeds(text: str) -> range:
    """``'3'`` -> subsets 0, 1, 2; ``'3-7'`` -> subsets 3 to 7 (both ends included)."""
    first, sep, last = text.partition("-")
    try:
        bounds = (0, int(first) - 1) if not sep else (int(first), int(last))
    except ValueError:
        bounds = (0, -1)
    if bounds[0] < 0 or bounds[1] < bounds[0]:
        raise ValueError(f"--seeds takes N >= 1 (subsets 0..N-1) or A-B with 0 <= A <= B (subsets A..B), got {text!r}")
    return range(bounds[0], bounds[1] + 1)


def expand(
    base: Config,
    grids: Sequence[Grid],
    seeds: int | Sequence[int],
    defaults: Mapping[str, Any] | None = None,
    init_per_subset: bool = False,
) -> list[Config]:
    """Every point of every grid for the training-subset seeds ``seeds`` (an int N: 0..N-1), each named by
    ``run_name``; seed by seed, so that a sweep cut short has covered every method once before it repeats any.
    ``init_per_subset``: subset s also gets its own initialisation seed, ``base.seed + s`` (subset 0 keeps
    the base seed), so that seeds vary initialisation as well as data.

    ``defaults``: regularizer hyperparameters (the sweep's flags) applied to every point whose regularizers
    take them. ValueError when a default applies to no point, when a point sets a hyperparameter that a
    default also sets to another value (naming both), or when two different points would share a run
    folder."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {seeds}")
        seeds = range(seeds)
    defaults = dict(defaults or {})
    used: set[str] = set()
    configs: dict[str, Config] = {}
    fields = set(field_types()) | {"regs"}
    for seed in seeds:
        for grid in grids:
            keys = list(grid)
            for values in itertools.product(*(grid[k] for k in keys)):
                point = dict(zip(keys, values))
                config = base.updated({k: v for k, v in point.items() if k in fields})
                if point.get("optimizer") == "adam" and base.optimizer != "adam":
                    if "momentum" in point:
                        raise ValueError("momentum applies to optimizer 'sgd' only; drop it from the adam points")
                    if "lr" not in point:  # Adam's own default, not the SGD rate of the preset
                        config = config.replace(lr=ADAM_LR)
                given = [(f"--{k} {format_value(v)}", k, v) for k, v in defaults.items()]
                given += [(f"{k}={format_value(v)} in the grid", k, v) for k, v in point.items() if k not in fields]
                clashes = conflicts(given, config.reg_names)
                if clashes:
                    raise ValueError("; ".join(clashes) + "; give one value")
                for key, value in defaults.items():
                    if regularizers.targets(key, config.reg_names):
                        used.add(key)
                        config = config.updated({key: value})
                config = config.updated({k: v for k, v in point.items() if k not in fields}).replace(shuf_seed=seed)
                if init_per_subset:
                    config = config.replace(seed=base.seed + seed)
                config = config.replace(name=run_name(config))
                earlier = configs.setdefault(config.name, config)
                if earlier != config:
                    raise ValueError(
                        f"two grid points map to the run folder {config.name}: "
                        f"{json.dumps(identity(earlier), default=str)} and {json.dumps(identity(config), default=str)}"
                        "; give them different values or split the sweep"
                    )
    unused = sorted(set(defaults) - used)
    if unused:
        raise ValueError(f"{', '.join(unused)}: no regularizer of the grid takes it")
    return list(configs.values())


def finished(config: Config, settings: EvalSettings | None) -> bool:
    """Trained to the last epoch and, when the sweep evaluates, evaluated with ``settings`` after that
    training. A damaged folder is not finished: its job runs and reports what is wrong."""
    try:
        metrics = read_metrics(run_path(config))
        done = trained_to_end(config, metrics)
        if not done or settings is None:
            return done
        result = read_robustness(run_path(config))
    except RunFolderError:
        return False
    return result is not None and result.settings == settings and result.trained_to in (None, metrics[-1].epoch)


def diverged(config: Config) -> bool:
    """Its training diverged (``rundir.read_divergence``): running it again would diverge again. A damaged
    record counts as none: the job runs and rewrites it."""
    try:
        return read_divergence(run_path(config)) is not None
    except RunFolderError:
        return False


def run_job(config_values: dict, settings_values: dict | None, threads: int) -> dict:
    """One run of a sweep (what a submitit job executes): train, resuming, then evaluate if asked, on
    ``threads`` CPU threads (so that concurrent runs do not oversubscribe the cores). Returns the run's
    folder, its last metrics row, and ``error`` (the exception's one-line text) when it failed."""
    import torch

    from ..progress import say
    from .training import train

    torch.set_num_threads(threads)
    config = Config.from_dict(config_values)
    summary: dict[str, Any] = {"run": str(run_path(config)), "name": config.name}
    try:
        metrics = train(config, log=say)
        summary["last"] = metrics[-1].to_dict() if metrics else None
        if settings_values is not None:
            evaluate_run(run_path(config), EvalSettings.from_dict(settings_values), config.device, log=say)
    except Exception as error:  # reported by the sweep, with the traceback in the job's log
        traceback.print_exc(file=sys.stderr)
        summary["error"] = f"{type(error).__name__}: {error}"
    return summary


def failures(outcomes: list[dict]) -> list[tuple[str, str]]:
    """(run name, error line) of each failed run of a sweep."""
    return [(o["name"], o["error"]) for o in outcomes if o.get("error")]


@dataclass(frozen=True)
class Cluster:
    """Where the jobs run: ``local`` processes (at most ``jobs`` at once) or ``slurm``."""

    kind: str = "local"
    jobs: int = 2
    partition: str | None = None
    time_min: int = 240
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int | None = None


def make_executor(folder: Path, cluster: Cluster) -> Any:
    submitit = require("submitit", "sweep", "kernel-reg sweep")

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster.kind)
    options: dict[str, Any] = dict(timeout_min=cluster.time_min, cpus_per_task=cluster.cpus_per_task, name="kernel-reg")
    if cluster.kind == "slurm":
        options.update(slurm_array_parallelism=cluster.jobs)
        if cluster.partition:
            options["slurm_partition"] = cluster.partition
        if cluster.gpus_per_node:
            options["gpus_per_node"] = cluster.gpus_per_node
        if cluster.mem_gb:
            options["mem_gb"] = cluster.mem_gb
    executor.update_parameters(**options)
    return executor


def run_sweep(
    configs: list[Config],
    cluster: Cluster,
    settings: EvalSettings | None = None,
    log: Callable[[str], None] = print,
) -> list:
    """Submit the unfinished runs; locally, wait for them (``cluster.jobs`` at a time) and return their
    outcomes (see ``run_job``; ``failures`` lists the failed ones); on Slurm return the submitted jobs
    (one job array)."""
    unfinished = [c for c in configs if not finished(c, settings)]
    todo = [c for c in unfinished if not diverged(c)]
    skipped = len(unfinished) - len(todo)
    note = f", {skipped} diverged (skipped; delete their {DIVERGED} to retry)" if skipped else ""
    log(f"sweep: {len(configs)} runs, {len(configs) - len(unfinished)} finished{note}, {len(todo)} to run")
    if not todo:
        return []
    folder = Path(todo[0].root) / todo[0].experiment / ".submitit"
    executor = make_executor(folder, cluster)
    settings_values = settings.to_dict() if settings is not None else None
    threads = cluster.cpus_per_task if cluster.kind == "slurm" else max(1, (os.cpu_count() or 1) // cluster.jobs)
    arguments = [(c.to_dict(), settings_values, threads) for c in todo]
    if cluster.kind == "slurm":
        jobs = executor.map_array(run_job, *zip(*arguments))
        log(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs); logs in {folder}")
        return jobs
    return _run_locally(executor, arguments, cluster.jobs, log)


def _run_locally(executor: Any, arguments: list[tuple], jobs: int, log: Callable[[str], None]) -> list[dict]:
    """Run the jobs ``jobs`` at a time and collect their outcomes. On SIGINT or SIGTERM the running jobs are
    interrupted (each keeps its last checkpoint), no other starts, and all are waited for: Interrupted."""
    pending = list(arguments)
    running: list[tuple[Any, str]] = []
    outcomes: list[dict] = []

    def stop(_signum: int) -> None:
        pending.clear()
        for job, _ in running:
            job.cancel(check=False)

    with forwarded(stop) as received:
        _collect(executor, pending, running, outcomes, jobs, log)
    if received:
        raise Interrupted(
            f"stopped: the {len([o for o in outcomes if o.get('error')])} interrupted or failed run(s) keep their "
            "last checkpoints and no other run was started; rerun the same command to resume the sweep",
            received[0],
        )
    return outcomes


def _collect(
    executor: Any, pending: list[tuple], running: list[tuple[Any, str]], outcomes: list[dict], jobs: int,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    while pending or running:
        while pending and len(running) < jobs:
            args = pending.pop(0)
            running.append((executor.submit(run_job, *args), args[0]["name"]))
        time.sleep(0.5)
        for job, name in [r for r in running if r[0].done()]:
            running.remove((job, name))
            try:
                outcome = job.result()
            except Exception as error:  # the job's process died (killed, out of memory)
                outcome = {"name": name, "error": f"the job died ({_first_line(error)}); log: {job.paths.stderr}"}
            if outcome.get("error"):
                log(f"FAILED: {name}: {outcome['error']} (log: {job.paths.stderr})")
            else:
                log(f"done: {name}")
            outcomes.append(outcome)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
