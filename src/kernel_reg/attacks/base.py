"""The attack contract and the l2 / linf balls every attack moves in."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..arguments import check_batch, check_choice, check_clip, check_inside_clip, check_positive, describe
from ..guard import preserved_state
from ..tensors import normalize_l2, per_example, project_l2, rand, randn


class Ball:
    """The eps ball {delta : ||delta|| <= eps} of one norm, as every attack uses it: the projection onto it,
    the steepest-ascent direction of a gradient for it, and points drawn uniformly in it.

    Stateless: one instance per norm lives in ``BALLS`` (``BALLS["l2"]``, ``BALLS["linf"]``); ``name`` is
    the norm's name. All methods act per example on batches (n, *shape).
    """

    name = ""

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The nearest point of the ball of radius ``eps`` to each example of ``delta``.

        Args:
            delta: perturbations, (n, *shape).
            eps: the radius, > 0.

        Returns:
            argmin_{||d|| <= eps} ||d - delta_i||_2 for each example, (n, *shape).
        """
        raise NotImplementedError

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction argmax_{||d|| <= 1} <grad_i, d> of each example.

        l2: grad / ||grad||_2 (zero stays zero); linf: sign(grad).

        Args:
            grad: gradients, (n, *shape).

        Returns:
            The directions, (n, *shape).
        """
        raise NotImplementedError

    def uniform(self, count: int, like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """``count`` points drawn uniformly in the ball of radius ``eps``.

        Args:
            count: the number of points.
            like: a batch (m, *shape) whose example shape, dtype and device the points take.
            eps: the radius, > 0.
            generator: the source of the draws (None: the global RNG); see ``tensors.randn``.

        Returns:
            The points, (count, *shape).
        """
        raise NotImplementedError


class L2Ball(Ball):
    """The l2 ball {delta : ||delta||_2 <= eps}, ``name`` "l2"."""

    name = "l2"

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """delta * eps / max(||delta||_2, eps), per example."""
        return project_l2(delta, eps)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """grad / ||grad||_2, per example (zero gradients stay zero)."""
        return normalize_l2(grad)

    def uniform(self, count: int, like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """A Gaussian direction g / ||g||_2 at radius eps U^(1/d), U uniform in [0, 1), d the example's size."""
        direction = normalize_l2(randn((count, *like.shape[1:]), like, generator))
        radius = eps * rand((count,), like, generator) ** (1.0 / like[0].numel())
        return direction * per_example(radius, direction)


class LinfBall(Ball):
    """The linf ball {delta : ||delta||_inf <= eps}, ``name`` "linf"."""

    name = "linf"

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """clamp(delta, -eps, eps), entry by entry."""
        return delta.clamp(-eps, eps)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """sign(grad), entry by entry (0 where the gradient is 0)."""
        return grad.sign()

    def uniform(self, count: int, like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """Every entry uniform in [-eps, eps), independently."""
        return (2 * rand((count, *like.shape[1:]), like, generator) - 1) * eps


BALLS: dict[str, Ball] = {"l2": L2Ball(), "linf": LinfBall()}  # the ball of each norm, by name
NORMS = tuple(BALLS)  # the valid values of ``norm``: ("l2", "linf")


class Attack:
    """The contract of every attack: ``attack(model, x, y) -> x_adv``.

    The model runs in eval mode (dropout off, BatchNorm on its running statistics) with gradients with
    respect to the inputs only; its train/eval flags, BatchNorm statistics and the caller's tensors are left
    as they were, and attacks work inside ``torch.no_grad()``. ``name`` names the attack in reports;
    ``repr`` shows its hyperparameters. Subclasses implement ``perturb`` (and ``check_inputs``).

    Shape:
        x: (n, *shape), the inputs; y: (n,), their class indices (int64).
        model(x): logits (n, k).
        Output: x_adv (n, *shape), like x.

    Returns:
        x_adv, detached, in the attack's eps ball around x and its clip box.

    Raises:
        ValueError: for inputs the attack cannot keep its guarantees on (``check_inputs``), or a model
            that does not return logits (n, k).
    """

    name = "attack"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_adv = perturb(model, x, y), detached, after ``check_inputs``, under ``preserved_state`` (eval mode)."""
        check_batch(self.name, x, y)
        x, y = x.detach(), y.detach()
        self.check_inputs(x)
        with preserved_state(model, mode=False), torch.enable_grad():
            return self.perturb(model, x, y).detach()

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise ValueError for inputs ``x`` (n, *shape) the attack cannot keep its guarantees on (no-op here)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack proper, on the model in eval mode with gradients enabled.

        Args:
            model: maps x to logits (n, k).
            x: the inputs, (n, *shape), detached and already checked.
            y: their class indices, (n,).

        Returns:
            x_adv, (n, *shape).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return describe(self)


class BallAttack(Attack):
    """An attack in the ball of radius ``eps`` of one norm, within the input range ``clip``:
    ||x_adv - x|| <= eps and lo <= x_adv <= hi.

    Args (keyword-only, shared by PGD, APGD and Square; the defaults are the subclasses'):
        norm: "l2" or "linf", the ball that ``x_adv - x`` stays in.
        eps: its radius, a finite number > 0.
        clip: the valid input range (lo, hi), lo < hi, that ``x_adv`` stays in, or None for none; inputs
            outside it are refused with a ValueError (clamping them would leave the ball), up to two ulps.
        generator: the source of the attack's random draws (None: the global RNG); a seeded
            ``torch.Generator`` (on any device: the draws are moved to the inputs') repeats an evaluation
            without touching the global RNG.

    Shape:
        x: (n, *shape); y: (n,); x_adv: (n, *shape), as for every ``Attack``.
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
        """Raise ValueError unless every entry of ``x`` lies in the clip box (see ``check_inside_clip``)."""
        check_inside_clip(x, self.clip, self.name)

    def constrain(self, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        """clamp(x + Proj_eps(x_new - x), lo, hi): ``x_new`` projected onto the ball around ``x``, then into the
        clip box (which keeps it in the ball, since ``x`` is in the box).

        Shape:
            x, x_new, output: (n, *shape).
        """
        x_new = x + self.ball.project(x_new - x, self.eps)
        return x_new if self.clip is None else x_new.clamp(*self.clip)


# an Attack, or any function (model, x (n, *shape), y (n,)) -> x_adv (n, *shape)
AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
