"""The run folder, the whole interface between training, evaluation and reports.

``<root>/<experiment>/<name>/`` holds ``config.json``, ``metrics.jsonl`` (one JSON object per evaluation),
``checkpoint.pt`` and, after evaluation, ``robustness.json``. Every file is written to a temporary file in
the same folder and renamed over the old one, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import models
from .config import Config
from .data import NUM_CLASSES, Splits, load_arrays, make_splits, resolve_data_dir

CONFIG, METRICS, CHECKPOINT, ROBUSTNESS = "config.json", "metrics.jsonl", "checkpoint.pt", "robustness.json"


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def run_path(config: Config) -> Path:
    return Path(config.root) / config.experiment / config.name


def read_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    return Config.from_dict(json.loads(path.read_text()))


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_splits(config: Config, device: torch.device, n_test: int | None = None) -> Splits:
    """The run's training / validation / test tensors on ``device``."""
    arrays = load_arrays(config.dataset, resolve_data_dir(config.dataset, config.data_dir))
    n_test = config.n_test if n_test is None else n_test
    return make_splits(arrays, config.n_train, config.n_val, config.shuf_seed, device, n_test)


def build_model(config: Config, device: torch.device) -> nn.Module:
    """The run's model, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return models.build(config.model, NUM_CLASSES, config.width).to(device)


def load_run(
    run_dir: str | Path, device: str = "auto", n_test: int | None = None, which: str = "best"
) -> tuple[Config, nn.Module, Splits, int]:
    """(config, model, data splits, epoch of the weights) of a run folder. ``which="best"``: the weights
    of best validation accuracy (the last ones when the run has no validation set); "last": the last."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT}: train it first")
    target = resolve_device(device)
    state = torch.load(run_dir / CHECKPOINT, map_location=target, weights_only=False)
    splits = load_splits(config, target, n_test)
    model = build_model(config, target)
    chosen = state["best"] if which == "best" and state.get("best") is not None else state
    model.load_state_dict(chosen["model"])
    model.eval()
    return config, model, splits, int(chosen["epoch"])
