"""Sweeps: a grid of runs, each in its own run folder, executed with submitit (local processes by
default, Slurm on a cluster). A sweep is resumable: finished runs are skipped, the others resume from
their checkpoints.

A grid is ``key=v1,v2 key2=w1`` (the product of the listed values) over any config field (``lr``,
``width``, ``n_train``, ...), ``reg=a+b`` combining regularizers (``reg=none`` for none), and
regularizer hyperparameters by name (``lmbda``, ``epsilon``: in every selected regularizer that takes it)
or qualified (``gradient-penalty.lmbda``). A grid file (JSON or YAML) holds a list of such mappings, e.g.
``[{"reg": ["gradient-penalty"], "lmbda": [0.01, 0.1, 1]}, {"reg": ["none"]}]``.

Each run is named by what it is: the method, its hyperparameters, the other keys the grid sets, the
subset seed and, when anything else differs from the preset (the sweep's own flags), a short hash of
all that differs, e.g. ``gradient-penalty_lmbda0.1_lr0.01_s0_h3fa2b1c9``. Two grid points never share a
folder: a sweep whose names would collide is refused before anything runs.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import regularizers
from .config import (
    SEED_FIELDS,
    Config,
    field_types,
    format_value,
    hyperparameters,
    identity,
    method_label,
    parse_value,
    preset_config,
    short_hash,
)
from .evaluation import EvalSettings, evaluate_run
from .rundir import ROBUSTNESS, RunFolderError, read_metrics, run_path

Grid = dict[str, list[Any]]


def parse_grid(text: str) -> Grid:
    """``'reg=gradient-penalty lmbda=0.01,0.1'`` -> {"regs": [("gradient-penalty",)], "lmbda": [0.01, 0.1]}."""
    grid: dict[str, Any] = {}
    for item in text.split():
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"grid entries are key=v1,v2,...; got {item!r}")
        grid[key] = values.split(",")
    return normalize_grid(grid)


def normalize_grid(grid: Mapping[str, Any]) -> Grid:
    """Typed values ("reg" -> "regs" tuples of names); ValueError naming an unknown key or a bad value."""
    typed: Grid = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
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
    import yaml

    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        kind = "YAML" if str(path).endswith((".yaml", ".yml")) else "JSON"
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


def run_name(config: Config, grid_keys: Sequence[str] = ()) -> str:
    """What a run is, readable: method, hyperparameters, the fields the grid sets (``grid_keys``),
    ``s<shuf_seed>``; then ``_h<hash>`` of every other value that differs from the preset (the sweep's
    own flags), the same for all the runs of one sweep. ``num_epochs`` counts only when the grid sets it:
    a sweep run again with more epochs extends its runs."""
    preset = preset_config(config.experiment).replace(regs=config.regs)
    now, base = identity(config), identity(preset)
    grid_params = {t for key in grid_keys if key not in now for t in regularizers.targets(key, config.reg_names)}
    shown = {**hyperparameters(config, include=grid_params)}
    shown.update({k: now[k] for k in grid_keys if k in now and k not in ("regs", *SEED_FIELDS)})
    readable = [method_label(config)]
    hidden = {k: v for k, v in now.items() if v != base.get(k) and k != "regs" and "." not in k}
    for key, value in shown.items():
        token = _token(key, value)
        if token is not None:
            readable.append(token)
            hidden.pop(key, None)
    readable.append(f"s{config.shuf_seed}")
    hidden.pop("shuf_seed", None)
    hidden.pop("num_epochs", None)  # a longer sweep extends the same runs (num_epochs may grow on resume)
    if config.seed != preset.seed:
        readable.append(f"seed{config.seed}")
        hidden.pop("seed")
    if hidden:
        readable.append("h" + short_hash(json.dumps(hidden, sort_keys=True, default=str)))
    return "_".join(readable)


def expand(base: Config, grids: Sequence[Grid], seeds: int, defaults: Mapping[str, Any] | None = None) -> list[Config]:
    """Every point of every grid for training-subset seeds 0..seeds-1, each named by ``run_name``; seed by
    seed, so that a sweep cut short has covered every method once before it repeats any.

    ``defaults``: regularizer hyperparameters (the sweep's flags) applied to every point whose regularizers
    take them, before the point's own values. ValueError when a default applies to no point, or when two
    different points would share a run folder."""
    if seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds}")
    defaults = dict(defaults or {})
    used: set[str] = set()
    configs: dict[str, Config] = {}
    fields = set(field_types()) | {"regs"}
    for seed in range(seeds):
        for grid in grids:
            keys = list(grid)
            for values in itertools.product(*(grid[k] for k in keys)):
                point = dict(zip(keys, values))
                config = base.updated({k: v for k, v in point.items() if k in fields})
                for key, value in defaults.items():
                    if regularizers.targets(key, config.reg_names):
                        used.add(key)
                        config = config.updated({key: value})
                config = config.updated({k: v for k, v in point.items() if k not in fields}).replace(shuf_seed=seed)
                config = config.replace(name=run_name(config, keys))
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


def finished(config: Config, evaluate: bool) -> bool:
    """Trained to the last epoch (and evaluated, when the sweep evaluates). A damaged folder is not
    finished: its job runs and reports what is wrong."""
    try:
        metrics = read_metrics(run_path(config))
    except RunFolderError:
        return False
    done = bool(metrics) and metrics[-1].epoch == config.num_epochs - 1
    return done and (not evaluate or (run_path(config) / ROBUSTNESS).is_file())


def run_job(config_values: dict, settings_values: dict | None, threads: int) -> dict:
    """One run of a sweep (what a submitit job executes): train, resuming, then evaluate if asked, on
    ``threads`` CPU threads (so that concurrent runs do not oversubscribe the cores). Returns the run's
    folder, its last metrics row, and ``error`` (the exception's one-line text) when it failed."""
    import torch

    from .progress import say
    from .training import train

    torch.set_num_threads(threads)
    config = Config.from_dict(config_values)
    summary: dict[str, Any] = {"run": str(run_path(config)), "name": config.name}
    try:
        metrics = train(config, log=say)
        summary["last"] = metrics[-1].to_dict() if metrics else None
        if settings_values is not None:
            settings_values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings_values.items()}
            evaluate_run(run_path(config), EvalSettings(**settings_values), config.device, log=say)
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


def make_executor(folder: Path, cluster: Cluster):  # type: ignore[no-untyped-def]
    import submitit

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
    todo = [c for c in configs if not finished(c, settings is not None)]
    log(f"sweep: {len(configs)} runs, {len(configs) - len(todo)} finished, {len(todo)} to run")
    if not todo:
        return []
    folder = Path(todo[0].root) / todo[0].experiment / ".submitit"
    executor = make_executor(folder, cluster)
    settings_values = asdict(settings) if settings is not None else None
    threads = cluster.cpus_per_task if cluster.kind == "slurm" else max(1, (os.cpu_count() or 1) // cluster.jobs)
    arguments = [(c.to_dict(), settings_values, threads) for c in todo]
    if cluster.kind == "slurm":
        jobs = executor.map_array(run_job, *zip(*arguments))
        log(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs); logs in {folder}")
        return jobs
    return _run_locally(executor, arguments, cluster.jobs, log)


def _run_locally(executor, arguments: list[tuple], jobs: int, log: Callable[[str], None]) -> list[dict]:  # type: ignore[no-untyped-def]
    pending, running, outcomes = list(arguments), [], []
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
    return outcomes


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
