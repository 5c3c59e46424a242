"""Sweeps: a grid of runs, each in its own run folder, executed with submitit (local processes by
default, Slurm on a cluster). A sweep is resumable: finished runs are skipped, the others resume from
their checkpoints.

A grid is ``key=v1,v2 key2=w1`` (the product of the listed values), ``reg=a+b`` combining regularizers
and ``reg=none`` for none; a grid file (JSON or YAML) holds a list of such mappings, e.g.
``[{"reg": ["gradient-penalty"], "lmbda": [0.01, 0.1, 1]}, {"reg": ["none"]}]``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import Config, field_types, hyperparameters, method_label
from .evaluation import EvalSettings, evaluate_run
from .rundir import ROBUSTNESS, read_metrics, run_path

Grid = dict[str, list[Any]]


def parse_grid(text: str) -> Grid:
    """``'reg=gradient-penalty lmbda=0.01,0.1'`` -> {"regs": [("gradient-penalty",)], "lmbda": [0.01, 0.1]}."""
    grid: Grid = {}
    for item in text.split():
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"grid entries are key=v1,v2,...; got {item!r}")
        grid[key] = values.split(",")
    return normalize_grid(grid)


def normalize_grid(grid: dict[str, Any]) -> Grid:
    """Typed values for Config fields ("reg" -> "regs" tuples); ValueError naming an unknown key."""
    types = field_types()
    typed: Grid = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if key in ("reg", "regs"):
            typed["regs"] = [_regs(v) for v in values]
        elif key in types and key != "regs":
            typed[key] = [types[key](v) if isinstance(v, str) else v for v in values]
        else:
            raise ValueError(f"unknown grid key {key!r}; valid keys: reg and the config fields {sorted(types)}")
    return typed


def _regs(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return () if value in ("none", "") else tuple(value.split("+"))


def load_grid_file(path: str | Path) -> list[Grid]:
    """Grids from a JSON or YAML file: one mapping or a list of them."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return [normalize_grid(g) for g in (data if isinstance(data, list) else [data])]


def run_name(config: Config) -> str:
    """method, the values of its hyperparameters and the subset seed: 'gradient-penalty_lmbda0.1_s0'."""
    params = [f"{name}{value:g}" for name, value in hyperparameters(config).items()]
    return "_".join([method_label(config), *params, f"s{config.shuf_seed}"])


def expand(base: Config, grids: Sequence[Grid], seeds: int) -> list[Config]:
    """Every point of every grid for training-subset seeds 0..seeds-1, each named by ``run_name``; seed by
    seed, so that a sweep cut short has covered every method once before it repeats any."""
    configs: dict[str, Config] = {}
    for seed in range(seeds):
        for grid in grids:
            keys = list(grid)
            for values in itertools.product(*(grid[k] for k in keys)):
                config = base.replace(**dict(zip(keys, values)), shuf_seed=seed)
                config = config.replace(name=run_name(config))
                configs.setdefault(config.name, config)
    return list(configs.values())


def finished(config: Config, evaluate: bool) -> bool:
    """Trained to the last epoch (and evaluated, when the sweep evaluates)."""
    metrics = read_metrics(run_path(config))
    done = bool(metrics) and metrics[-1]["epoch"] == config.num_epochs - 1
    return done and (not evaluate or (run_path(config) / ROBUSTNESS).is_file())


def run_job(config_values: dict, settings_values: dict | None, threads: int) -> dict:
    """One run of a sweep (what a submitit job executes): train, resuming, then evaluate if asked, on
    ``threads`` CPU threads (so that concurrent runs do not oversubscribe the cores)."""
    import torch

    from .training import train

    torch.set_num_threads(threads)
    config = Config.from_dict(config_values)
    metrics = train(config, log=lambda line: print(line, flush=True))
    summary = {"run": str(run_path(config)), "last": metrics[-1] if metrics else None}
    if settings_values is not None:
        settings_values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings_values.items()}
        summary["robustness"] = evaluate_run(run_path(config), EvalSettings(**settings_values), config.device)
    return summary


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
    """Submit the unfinished runs; locally, wait for them (``cluster.jobs`` at a time), on Slurm return
    the submitted jobs (one job array)."""
    todo = [c for c in configs if not finished(c, settings is not None)]
    log(f"sweep: {len(configs)} runs, {len(configs) - len(todo)} finished, {len(todo)} to run")
    if not todo:
        return []
    folder = Path(todo[0].root) / todo[0].experiment / ".submitit"
    executor = make_executor(folder, cluster)
    settings_values = asdict(settings) if settings is not None else None
    threads = cluster.cpus_per_task if cluster.kind == "slurm" else max(1, (os.cpu_count() or 1) // cluster.jobs)
    arguments = [(asdict(c), settings_values, threads) for c in todo]
    if cluster.kind == "slurm":
        jobs = executor.map_array(run_job, *zip(*arguments))
        log(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs); logs in {folder}")
        return jobs
    return _run_locally(executor, arguments, cluster.jobs, log)


def _run_locally(executor, arguments: list[tuple], jobs: int, log: Callable[[str], None]) -> list:  # type: ignore[no-untyped-def]
    pending, running, results = list(arguments), [], []
    while pending or running:
        while pending and len(running) < jobs:
            args = pending.pop(0)
            running.append((executor.submit(run_job, *args), args[0]["name"]))
        time.sleep(0.5)
        for job, name in [r for r in running if r[0].done()]:
            running.remove((job, name))
            try:
                results.append(job.result())
                log(f"done: {name}")
            except Exception as error:  # a failed run must not stop the others
                log(f"FAILED: {name}: {str(error).strip().splitlines()[-1]} (log: {job.paths.stderr})")
    return results
