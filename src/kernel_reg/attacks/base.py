"""The attack contract and the l2 / linf balls every attack moves in."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..arguments import check_choice, check_clip, check_inside_clip, check_positive, describe
from ..guard import preserved_state
from ..tensors import normalize_l2, per_example, project_l2, rand, randn


class Ball:
    """The eps ball of one norm, as every attack uses it: projection onto it, the steepest-ascent direction
    of a gradient for it, and points drawn uniformly in it."""

    name = ""

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The nearest point of the ball of radius ``eps`` to each example of ``delta`` (n, *shape)."""
        raise NotImplementedError

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """argmax over the unit ball of <grad, d>, per example: grad / ||grad||_2 (l2) or sign(grad) (linf)."""
        raise NotImplementedError

    def uniform(self, count: int, like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """``count`` points uniform in the ball of radius ``eps``, shaped like the examples of ``like``."""
        raise NotImplementedError


class L2Ball(Ball):
    """{||delta||_2 <= eps}."""

    name = "l2"

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return project_l2(delta, eps)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return normalize_l2(grad)

    def uniform(self, count: int, like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """A Gaussian direction at radius eps U^(1/d)."""
        direction = normalize_l2(randn((count, *like.shape[1:]), like, generator))
        radius = eps * rand((count,), like, generator) ** (1.0 / like[0].numel())
        return direction * per_example(radius, direction)


class LinfBall(Ball):
    """{||delta||_inf <= eps}."""

    name = "linf"

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta.clamp(-eps, eps)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def uniform(self, count: int, like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        return (2 * rand((count, *like.shape[1:]), like, generator) - 1) * eps


BALLS: dict[str, Ball] = {"l2": L2Ball(), "linf": LinfBall()}
NORMS = tuple(BALLS)


class Attack:
    """The contract of every attack: ``attack(model, x, y) -> x_adv``.

    Shape: x (n, *shape), y (n,) class indices; the model maps x to logits (n, k).
    Returns: x_adv (n, *shape), detached, in the attack's eps ball around x and its clip box.

    The model runs in eval mode; its train/eval flags, BatchNorm statistics and the caller's tensors are
    left as they were, and attacks work inside ``torch.no_grad()``. ``name`` names the attack in reports;
    ``repr`` shows its hyperparameters. Subclasses implement ``perturb``.
    """

    name = "attack"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        self.check_inputs(x)
        with preserved_state(model, mode=False), torch.enable_grad():
            return self.perturb(model, x, y).detach()

    def check_inputs(self, x: torch.Tensor) -> None:
        """ValueError for inputs the attack cannot keep its guarantees on."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack proper, on the model in eval mode with gradients enabled."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return describe(self)


class BallAttack(Attack):
    """An attack in the ball of radius ``eps`` of one norm, within the input range ``clip``.

    Args (keyword-only, shared by PGD, APGD and Square):
        norm: "l2" or "linf", the ball that ``x_adv - x`` stays in.
        eps: its radius.
        clip: the valid input range (lo, hi) that ``x_adv`` stays in, or None; inputs outside it are
            refused (clamping them would leave the ball).
        generator: the source of the attack's random draws (None: the global RNG); a seeded
            ``torch.Generator`` repeats an evaluation without touching the global RNG.
    """

    def __init__(
        self, *, norm: str, eps: float, clip: tuple[float, float] | None, generator: torch.Generator | None
    ) -> None:
        self.norm = check_choice("norm", norm, NORMS)
        self.ball = BALLS[norm]
        self.eps = check_positive("eps", eps)
        self.clip = check_clip(clip)
        self.generator = generator

    def check_inputs(self, x: torch.Tensor) -> None:
        check_inside_clip(x, self.clip, self.name)

    def constrain(self, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        """``x_new`` projected onto the ball around ``x``, then into the clip box (which keeps it in the
        ball, since ``x`` is in the box)."""
        x_new = x + self.ball.project(x_new - x, self.eps)
        return x_new if self.clip is None else x_new.clamp(*self.clip)


AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # an Attack, or any such function
