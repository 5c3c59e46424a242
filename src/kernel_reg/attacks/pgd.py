"""PGD (Madry, Makelov, Schmidt, Tsipras and Vladu, ICLR 2018) in the l2 and linf balls."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import check_choice, check_int, check_logits, check_positive
from ..deprecation import old_arguments
from ..distributed import SINGLE, Group
from ..tensors import per_example
from .base import BallAttack

# per norm, the original's defaults: the radius, the step size (None: 1.5 eps / steps) and the random start
DEFAULTS: dict[str, tuple[float, float | None, bool]] = {"l2": (1.0, None, False), "linf": (8 / 255, 0.01, True)}


class PGD(BallAttack):
    """Projected gradient ascent on the cross-entropy (Madry, Makelov, Schmidt, Tsipras and Vladu, ICLR 2018).

    From delta = 0 (or, with ``random_start``, a point uniform in the ball), ``steps`` steps

        delta <- Proj(delta + step_size * direction(grad_delta CE(f(x + delta), y))),

    direction(g) = g / ||g||_2 (l2) or sign(g) (linf), Proj the projection onto the ball then the clip box;
    x_adv = x + delta. With ``restarts`` > 1, each example keeps the worst case over the restarts: a
    misclassified point beats a correctly classified one, then the larger loss wins (restarts differ only
    with ``random_start``). On several processes (``group``), random starts are drawn for the global batch
    (see ``distributed.Group.draw``). Cost: restarts * steps forward and backward passes (plus one forward
    per restart when restarts > 1).

    Args (keyword-only):
        norm: "l2" (default) or "linf", the ball.
        eps: its radius, > 0; None (default): the original's, 1 (l2) or 8/255 (linf).
        steps: the number of ascent steps, >= 1 (default 5).
        step_size: the step length, > 0; None (default): 1.5 eps / steps (l2) or 0.01 (linf).
        random_start: start from a uniform point of the ball rather than from x; None (default): True for
            linf or several restarts, else False. Several restarts need it (from x they would all agree).
        restarts: the number of runs, >= 1 (default 1); each example keeps its worst case.
        clip: the input range (lo, hi) x_adv stays in, or None (default (0, 1)).
        group: the process group of distributed training (default: a single process).
        generator: the source of the random starts (None, default: the global RNG).

    Shape:
        x: (n, *shape); y: (n,) class indices; model(x): logits (n, k).

    Returns:
        x_adv (n, *shape), detached, with ||x_adv - x|| <= eps and x_adv in the clip box.

    Example:
        >>> attack = attacks.PGD(norm="linf", eps=8 / 255, steps=10)
        >>> x_adv = attack(model, x, y)  # x in [0, 1]
        >>> assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
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
        self.restarts = check_int("restarts", restarts)
        if random_start is None:
            random_start = default_start or self.restarts > 1
        if self.restarts > 1 and not random_start:
            raise ValueError(f"restarts={restarts} needs random_start=True: from x, every restart is the same")
        self.random_start = bool(random_start)
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
        """The best of ``restarts`` runs of ``steps`` projected ascent steps, per example."""
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


# the signature of PGDL2 and PGDLinf before arguments became keyword-only (0.2)
PGD_POSITIONAL = ("eps", "steps", "step_size", "random_start", "restarts", "clip")


class PGDL2(PGD):
    """PGD in the l2 ball with the original's defaults: ``PGD(norm="l2", ...)``, named "PGDL2".

    Args:
        **arguments: the keyword arguments of ``PGD`` but ``norm`` (defaults: eps 1, 5 steps of
            1.5 eps / steps, no random start).
    """

    fixed_arguments = ("norm",)

    @old_arguments(PGD_POSITIONAL)
    def __init__(self, **arguments: Any) -> None:
        super().__init__(norm="l2", **arguments)
        self.name = "PGDL2"


class PGDLinf(PGD):
    """PGD in the linf ball with the original's defaults: ``PGD(norm="linf", ...)``, named "PGDLinf".

    Args:
        **arguments: the keyword arguments of ``PGD`` but ``norm`` (defaults: eps 8/255, 5 steps of
            0.01, a random start).
    """

    fixed_arguments = ("norm",)

    @old_arguments(PGD_POSITIONAL)
    def __init__(self, **arguments: Any) -> None:
        super().__init__(norm="linf", **arguments)
        self.name = "PGDLinf"
