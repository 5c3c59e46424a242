"""Evaluation of a model: clean accuracy, PGD robust accuracy, certified accuracy; of a run folder:
``robustness.json``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import spectral
from ._guards import check_int, check_positive, preserved_state
from .attacks import PGDL2, PGDLinf
from .rundir import ROBUSTNESS, atomic_write_text, load_run

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on (x, y)."""
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    loss, correct = 0.0, 0
    with preserved_state(model, mode=False), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    return loss / x.shape[0], correct / x.shape[0]


def robust_accuracy(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Accuracy on ``attack``'s adversarial examples (each batch attacked once)."""
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        x_adv = attack(model, xb, yb)
        with preserved_state(model, mode=False), torch.no_grad():
            correct += int((model(x_adv).argmax(1) == yb).sum())
    return correct / x.shape[0]


@dataclass(frozen=True)
class EvalSettings:
    """The robustness evaluation; defaults are the original's (100 steps, l2 step 0.5, linf step 0.01)."""

    l2_eps: tuple[float, ...] = (0.1, 0.5, 1.0, 1.5)
    linf_eps: tuple[float, ...] = (1 / 255, 2 / 255, 5 / 255, 8 / 255)
    steps: int = 100
    l2_step_size: float = 0.5
    linf_step_size: float = 0.01
    restarts: int = 1
    n_test: int | None = 1000
    batch_size: int = 500

    def __post_init__(self) -> None:
        for eps in self.l2_eps + self.linf_eps:
            check_positive("eps_test", eps)
        check_int("steps", self.steps)
        check_positive("l2_step_size", self.l2_step_size)
        check_positive("linf_step_size", self.linf_step_size)
        check_int("restarts", self.restarts)
        check_int("batch_size", self.batch_size)
        if self.n_test is not None:
            check_int("n_test", self.n_test)


def eps_key(eps: float) -> str:
    """The JSON key of a radius: its shortest exact-enough decimal."""
    return f"{eps:.6g}"


def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings, input_shape: Sequence[int]
) -> dict:
    """Clean, PGD-l2, PGD-linf and certified-l2 accuracies of ``model`` on (x, y)."""
    restart = dict(random_start=settings.restarts > 1, restarts=settings.restarts)
    _, clean = accuracy(model, x, y, settings.batch_size)
    l2 = {
        eps_key(eps): robust_accuracy(
            model, PGDL2(eps, settings.steps, settings.l2_step_size, **restart), x, y, settings.batch_size
        )
        for eps in settings.l2_eps
    }
    linf = {
        eps_key(eps): robust_accuracy(
            model, PGDLinf(eps, settings.steps, settings.linf_step_size, **restart), x, y, settings.batch_size
        )
        for eps in settings.linf_eps
    }
    lipschitz = spectral.lipschitz_upper_bound(model, input_shape)
    certified = {eps_key(eps): spectral.certified_accuracy(model, x, y, eps, lipschitz) for eps in settings.l2_eps}
    attacks = {
        "l2": f"PGD-l2, {settings.steps} steps of {settings.l2_step_size}, {settings.restarts} restart(s)",
        "linf": f"PGD-linf, {settings.steps} steps of {settings.linf_step_size}, {settings.restarts} restart(s)",
        "certified_l2": "margin > sqrt(2) * L * eps, L the Gram-iteration Lipschitz upper bound",
    }
    return dict(
        clean=clean, l2=l2, linf=linf, certified_l2=certified, lipschitz_bound=lipschitz, attacks=attacks, n=len(y)
    )


def evaluate_run(run_dir: str | Path, settings: EvalSettings, device: str = "auto", which: str = "best") -> dict:
    """Evaluate a run folder's weights of best validation accuracy (``which="last"``: its last weights)
    on its test set; writes ``robustness.json`` there."""
    run_dir = Path(run_dir)
    _, model, splits, epoch = load_run(run_dir, device, n_test=settings.n_test, which=which)
    result = evaluate_model(model, splits.test_x, splits.test_y, settings, splits.input_shape)
    result.update(epoch=epoch, weights=which, settings=asdict(settings))
    atomic_write_text(run_dir / ROBUSTNESS, json.dumps(result, indent=2))
    return result
