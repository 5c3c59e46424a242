"""PGD (Madry et al., 2018) in the l2 and linf balls."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import check_choice, check_int, check_logits, check_positive
from ..distributed import SINGLE, Group
from ..tensors import per_example
from .base import BallAttack

# per norm, the original's defaults: the radius, the step size (None: 1.5 eps / steps) and the random start
DEFAULTS: dict[str, tuple[float, float | None, bool]] = {"l2": (1.0, None, False), "linf": (8 / 255, 0.01, True)}


class PGD(BallAttack):
    """Projected gradient ascent on the cross-entropy (Madry et al., 2018).

    From x (or, with ``random_start``, a point uniform in the ball), ``steps`` steps
    delta <- Proj(delta + step_size * direction(grad_delta CE(f(x + delta), y))), the projection onto the
    ball then the clip box. With ``restarts`` > 1, each example keeps the worst case over the restarts:
    a misclassified point beats a correctly classified one, then the larger loss wins. On several
    processes (``group``), random starts are drawn for the global batch (see ``distributed.Group.draw``).

    ``eps``, ``step_size`` and ``random_start`` left as None take the original's defaults for the norm:
    l2: eps 1, steps of 1.5 eps / steps, no random start; linf: eps 8/255, steps of 0.01, a random start.
    """

    fixed_arguments: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | None = None,
        steps: int = 5,
        step_size: float | None = None,
        random_start: bool | None = None,
        restarts: int = 1,
        clip: tuple[float, float] | None = (0.0, 1.0),
        group: Group = SINGLE,
        generator: torch.Generator | None = None,
    ) -> None:
        default_eps, default_step, default_start = DEFAULTS[check_choice("norm", norm, tuple(DEFAULTS))]
        super().__init__(norm=norm, eps=default_eps if eps is None else eps, clip=clip, generator=generator)
        self.steps = check_int("steps", steps)
        step_size = default_step if step_size is None else step_size
        self.step_size = 1.5 * self.eps / self.steps if step_size is None else check_positive("step_size", step_size)
        self.random_start = default_start if random_start is None else bool(random_start)
        self.restarts = check_int("restarts", restarts)
        self.group = group
        self.name = f"PGD-{self.norm}"

    def _ascend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = torch.zeros_like(x)
        if self.random_start:
            start = self.group.draw(lambda count: self.ball.uniform(count, x, self.eps, self.generator), len(x))
        x_adv = self.constrain(x, x + start)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            logits = check_logits(model(x_adv), x.shape[0])
            grad = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)[0]
            x_adv = self.constrain(x, x_adv.detach() + self.step_size * self.ball.direction(grad))
        return x_adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = self._ascend(model, x, y)
        if self.restarts == 1:
            return best
        with torch.no_grad():
            best_wrong, best_loss = _outcome(model, best, y)
        for _ in range(self.restarts - 1):
            candidate = self._ascend(model, x, y)
            with torch.no_grad():
                wrong, loss = _outcome(model, candidate, y)
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best = torch.where(per_example(better, x), candidate, best)
            best_wrong, best_loss = best_wrong | wrong, torch.where(better, loss, best_loss)
        return best


def _outcome(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: misclassified (bool) and cross-entropy."""
    logits = model(x)
    return logits.argmax(1) != y, F.cross_entropy(logits, y, reduction="none")


class PGDL2(PGD):
    """PGD in the l2 ball with the original's defaults (``PGD(norm="l2", ...)``)."""

    fixed_arguments = ("norm",)

    def __init__(self, **arguments: Any) -> None:
        super().__init__(norm="l2", **arguments)
        self.name = "PGDL2"


class PGDLinf(PGD):
    """PGD in the linf ball with the original's defaults (``PGD(norm="linf", ...)``)."""

    fixed_arguments = ("norm",)

    def __init__(self, **arguments: Any) -> None:
        super().__init__(norm="linf", **arguments)
        self.name = "PGDLinf"
