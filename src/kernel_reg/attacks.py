"""Adversarial attacks: ``attack(model, x, y) -> x_adv``.

Attacks maximise the cross-entropy of the model in eval mode (dropout off, BatchNorm on its running
statistics), take gradients with respect to the inputs only, leave the model's mode, its BatchNorm
statistics and the caller's tensors as they were, and work inside ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._guards import (
    check_choice,
    check_clip,
    check_inside_clip,
    check_int,
    check_logits,
    check_positive,
    describe,
    normalize_l2,
    per_example,
    preserved_state,
    project_l2,
    rand,
    randint,
    randn,
)
from .distributed import SINGLE, Group


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


class PGD(BallAttack):
    """Projected gradient ascent on the cross-entropy (Madry et al., 2018).

    From x (or, with ``random_start``, a point uniform in the ball), ``steps`` steps
    delta <- Proj(delta + step_size * direction(grad_delta CE(f(x + delta), y))), the projection onto the
    ball then the clip box. With ``restarts`` > 1, each example keeps the worst case over the restarts:
    a misclassified point beats a correctly classified one, then the larger loss wins. On several
    processes (``group``), random starts are drawn for the global batch (see ``distributed.Group.draw``).
    """

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float = 1.0,
        steps: int = 5,
        step_size: float | None = None,
        random_start: bool = False,
        restarts: int = 1,
        clip: tuple[float, float] | None = (0.0, 1.0),
        group: Group = SINGLE,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(norm=norm, eps=eps, clip=clip, generator=generator)
        self.steps = check_int("steps", steps)
        self.step_size = 1.5 * self.eps / self.steps if step_size is None else check_positive("step_size", step_size)
        self.random_start = bool(random_start)
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
    """PGD in the l2 ball with the original's defaults: normalised gradient steps of 1.5 eps / steps, no
    random start (a uniform one in the ball with ``random_start``)."""

    def __init__(
        self,
        *,
        eps: float = 1.0,
        steps: int = 5,
        step_size: float | None = None,
        random_start: bool = False,
        restarts: int = 1,
        clip: tuple[float, float] | None = (0.0, 1.0),
        group: Group = SINGLE,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(norm="l2", eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                         restarts=restarts, clip=clip, group=group, generator=generator)  # fmt: skip
        self.name = "PGDL2"


class PGDLinf(PGD):
    """PGD in the linf ball with the original's defaults: sign steps of 0.01 from a uniform random start."""

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        steps: int = 5,
        step_size: float = 0.01,
        random_start: bool = True,
        restarts: int = 1,
        clip: tuple[float, float] | None = (0.0, 1.0),
        group: Group = SINGLE,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(norm="linf", eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                         restarts=restarts, clip=clip, group=group, generator=generator)  # fmt: skip
        self.name = "PGDLinf"


# ---------------------------------------------------------------------------------------------
# Stronger evaluation attacks: APGD (Croce & Hein, 2020), Square (Andriushchenko et al., 2020),
# and the per-example worst case over several attacks.


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3), per example (needs k >= 3)."""
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    best_other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return -(true - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), per example (needs k >= 4)."""
    ordered = logits.sort(dim=1, descending=True).values
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return -gap / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f_y - max_{j != y} f_j per example: negative exactly when misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def _apgd_checkpoints(steps: int) -> list[int]:
    """Iterations w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(q * steps, 9)) for q in p[1:]}  # round: 0.57 * 100 is 57.00000000000001
    return sorted(w for w in marks if 0 < w < steps)


class APGD(BallAttack):
    """Auto-PGD (Croce & Hein, ICML 2020), untargeted (loss "ce" or "dlr") or targeted (APGD-T: the
    DLR loss towards each of the ``n_target_classes`` highest other classes in turn).

    From a point uniform in the ball, steps of size eta (initially 2 eps) along the ball's direction of
    the gradient, with momentum alpha = 0.75, projected on the ball and the input range. At the
    checkpoints w_j, eta is halved and the iterate reset to the best point when the loss increased in
    fewer than rho = 0.75 of the steps since w_{j-1}, or when eta was not halved at w_{j-1} and the best
    loss has not improved since. Per example, the first misclassified point found is kept (else the
    point of largest loss); restarts and targets run only on the examples still unbroken.
    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float = 8 / 255,
        loss: str = "ce",
        targeted: bool = False,
        n_target_classes: int = 9,
        steps: int = 100,
        restarts: int = 1,
        clip: tuple[float, float] | None = (0.0, 1.0),
        rho: float = 0.75,
        alpha: float = 0.75,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(norm=norm, eps=eps, clip=clip, generator=generator)
        self.loss = check_choice("loss", loss, ("ce", "dlr"))
        if targeted and loss != "dlr":
            raise ValueError(f"loss must be 'dlr' for the targeted attack, got {loss!r}")
        self.targeted = bool(targeted)
        self.n_target_classes = check_int("n_target_classes", n_target_classes)
        self.steps = check_int("steps", steps)
        self.restarts = check_int("restarts", restarts)
        self.rho = check_positive("rho", rho)
        self.alpha = check_positive("alpha", alpha)
        self.name = f"APGD-{'T' if self.targeted else self.loss.upper()}"

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if target is not None:
            return targeted_dlr_loss(logits, y, target)
        if self.loss == "dlr":
            return dlr_loss(logits, y)
        return F.cross_entropy(logits, y, reduction="none")

    def _evaluate(
        self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example loss, its input gradient, and whether x_adv is misclassified."""
        x_adv = x_adv.detach().requires_grad_(True)
        logits = check_logits(model(x_adv), x_adv.shape[0])
        loss = self._loss(logits, y, target)
        grad = torch.autograd.grad(loss.sum(), x_adv)[0]
        return loss.detach(), grad, logits.argmax(1) != y

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run: (per example, the first misclassified point or else the best-loss point; broken)."""
        checkpoints = set(_apgd_checkpoints(self.steps))
        eta = torch.full((x.shape[0],), 2.0 * self.eps, device=x.device, dtype=x.dtype)
        x_cur = self.constrain(x, x + self.ball.uniform(len(x), x, self.eps, self.generator))
        loss_cur, grad_cur, wrong = self._evaluate(model, x_cur, y, target)
        x_prev = x_cur
        x_best, loss_best, grad_best = x_cur, loss_cur, grad_cur
        broken, x_broken = wrong, x_cur
        increases = torch.zeros_like(eta)
        reduced_last = torch.ones_like(wrong)  # no "unchanged step size" test at the first checkpoint
        loss_best_last = loss_best
        window_start = 0
        for k in range(self.steps):
            z = self.constrain(x, x_cur + per_example(eta, x) * self.ball.direction(grad_cur))
            if k > 0:
                z = self.constrain(x, x_cur + self.alpha * (z - x_cur) + (1 - self.alpha) * (x_cur - x_prev))
            loss_new, grad_new, wrong = self._evaluate(model, z, y, target)
            x_broken = torch.where(per_example(wrong & ~broken, x), z, x_broken)
            broken = broken | wrong
            increases += (loss_new > loss_cur).to(increases.dtype)
            better = loss_new > loss_best
            x_best = torch.where(per_example(better, x), z, x_best)
            grad_best = torch.where(per_example(better, x), grad_new, grad_best)
            loss_best = torch.where(better, loss_new, loss_best)
            x_prev, x_cur, loss_cur, grad_cur = x_cur, z, loss_new, grad_new
            if k + 1 in checkpoints:
                oscillating = increases < self.rho * (k + 1 - window_start)
                stalled = ~reduced_last & (loss_best <= loss_best_last)
                reduce = oscillating | stalled
                eta = torch.where(reduce, eta / 2, eta)
                x_cur = torch.where(per_example(reduce, x), x_best, x_cur)
                grad_cur = torch.where(per_example(reduce, x), grad_best, grad_cur)
                loss_cur = torch.where(reduce, loss_best, loss_cur)
                reduced_last, loss_best_last = reduce, loss_best
                increases = torch.zeros_like(increases)
                window_start = k + 1
        return torch.where(per_example(broken, x), x_broken, x_best).detach(), broken

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = check_logits(model(x), x.shape[0])
        k = clean.shape[1]
        if self.loss == "dlr" and k < (4 if self.targeted else 3):
            raise ValueError(f"the {self.name} loss needs at least {4 if self.targeted else 3} classes, got {k}")
        x_adv = x.clone()
        broken = clean.argmax(1) != y
        ranking = clean.argsort(dim=1, descending=True)
        targets = [ranking[:, i] for i in range(1, min(self.n_target_classes, k - 1) + 1)] if self.targeted else [None]
        for target in targets:
            for _ in range(self.restarts):
                todo = (~broken).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return x_adv
                sub_target = None if target is None else target[todo]
                found, wrong = self._run(model, x[todo], y[todo], sub_target)
                keep = wrong | (x_adv[todo] == x[todo]).flatten(1).all(1)  # a first point for the unbroken
                x_adv[todo[keep]] = found[keep]
                broken[todo[wrong]] = True
        return x_adv


def _p_schedule(p_init: float, query: int, queries: int) -> float:
    """The fraction of pixels changed per query: p_init halved at 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000 queries of a 10,000-query budget (rescaled to ``queries``)."""
    scaled = int(query / queries * 10000)
    halvings = sum(scaled > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def _meta_pattern(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The l2 Square attack's square update (size, size): concentric rings of weight 1/(ring+1)^2 around
    the centre of each half, the second half of opposite sign, unit l2 norm."""
    half = max(size // 2, 1)
    pattern = torch.zeros(size, size, device=device, dtype=dtype)
    for block, sign in ((slice(0, half), 1.0), (slice(half, size), -1.0)):
        width = pattern[:, block].shape[1]
        if width == 0:
            continue
        rows = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
        cols = torch.arange(width, device=device, dtype=dtype) - (width - 1) / 2
        ring = torch.maximum(rows.abs()[:, None], cols.abs()[None, :]).floor()
        pattern[:, block] = sign / (ring + 1) ** 2
    return pattern / pattern.norm()


class Square(BallAttack):
    """Square attack (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020): random search on the
    margin f_y - max_{j != y} f_j with square-shaped updates, using no gradients at all.

    linf: starts from vertical stripes of +-eps, then sets a random square (side sqrt(p H W)) of each
    channel to +-eps. l2: starts from a random point of the sphere, then moves the perturbation's mass
    in two random squares into the first, shaped by the meta-pattern, keeping ||delta||_2 = eps. A
    proposal is kept when it lowers the margin; examples stop once misclassified. p follows the
    paper's halving schedule from ``p_init`` (default 0.05 linf, 0.1 l2). Inputs are images (n, C, H, W)
    of at least 2 x 2 pixels.
    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float = 8 / 255,
        queries: int = 5000,
        p_init: float | None = None,
        clip: tuple[float, float] | None = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(norm=norm, eps=eps, clip=clip, generator=generator)
        self.queries = check_int("queries", queries)
        self.p_init = (0.05 if norm == "linf" else 0.1) if p_init is None else check_positive("p_init", p_init)
        self.name = "Square"

    def _clip(self, x_adv: torch.Tensor) -> torch.Tensor:
        return x_adv.clamp(*self.clip) if self.clip is not None else x_adv

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return (2 * randint(2, shape, like, self.generator) - 1).to(like.dtype)

    def _windows(self, n: int, side: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random side x side square per example: its mask (n, 1, H, W), top rows and left columns (n,)."""
        height, width = like.shape[-2:]
        top = randint(height - side + 1, (n,), like, self.generator)
        left = randint(width - side + 1, (n,), like, self.generator)
        rows = torch.arange(height, device=like.device)
        cols = torch.arange(width, device=like.device)
        in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side)
        in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side)
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(like.dtype), top, left

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = x.shape
        if self.norm == "linf":  # vertical stripes
            return self.eps * self._signs((n, channels, 1, width), x).expand(n, channels, height, width)
        return self.eps * normalize_l2(randn(tuple(x.shape), x, self.generator))

    def _propose(self, delta: torch.Tensor, side: int) -> torch.Tensor:
        n, channels, height, width = delta.shape
        if self.norm == "linf":
            window = self._windows(n, side, delta)[0]
            return delta * (1 - window) + self.eps * self._signs((n, channels, 1, 1), delta) * window
        first, top, left = self._windows(n, side, delta)
        second = self._windows(n, side, delta)[0]
        both = torch.clamp(first + second, max=1.0)
        # the budget of both squares plus what the perturbation does not use goes into the first square
        budget = (self.eps**2 - delta.flatten(1).pow(2).sum(1) + (delta * both).flatten(1).pow(2).sum(1)).clamp_min(0)
        pattern = _meta_pattern(side, delta.device, delta.dtype)  # unit norm
        rows = torch.arange(height, device=delta.device)[None] - top[:, None]  # (n, H): row within the square
        cols = torch.arange(width, device=delta.device)[None] - left[:, None]
        placed = pattern[rows.clamp(0, side - 1)[:, :, None], cols.clamp(0, side - 1)[:, None, :]]
        placed = (placed * first[:, 0]).unsqueeze(1)  # (n, 1, H, W), zero outside the square
        scale = (budget / channels).sqrt()
        return delta * (1 - both) + per_example(scale, delta) * self._signs((n, channels, 1, 1), delta) * placed

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or min(x.shape[-2:]) < 2:
            raise ValueError(f"Square needs image batches (n, C, H, W) with H, W >= 2, got shape {tuple(x.shape)}")
        return super().__call__(model, x, y)

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        x_adv = self._clip(x + self._start(x))
        delta = x_adv - x
        best = margin(check_logits(model(x_adv), n), y)
        for query in range(1, self.queries):
            todo = (best > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            p = _p_schedule(self.p_init, query, self.queries)
            side = min(max(int(round(math.sqrt(p * height * width))), 1), height - 1, width - 1)
            proposal = self._clip(x[todo] + self._propose(delta[todo], side)) - x[todo]
            value = margin(model(x[todo] + proposal), y[todo])
            improved = value < best[todo]
            delta[todo[improved]] = proposal[improved]
            best[todo[improved]] = value[improved]
        return x + delta


def worst_case(
    model: nn.Module, attacks: Sequence[Attack], x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, int]]:
    """Run ``attacks`` in turn, each on the examples no earlier one has misclassified; returns the
    adversarial batch and how many examples each attack broke first (by its name)."""
    x, y = x.detach(), y.detach()
    for attack in attacks:  # fail before any attack runs, even if no example is left for one of them
        attack.check_inputs(x)
    with preserved_state(model, mode=False), torch.no_grad():
        robust = check_logits(model(x), x.shape[0]).argmax(1) == y
    x_adv = x.clone()
    breakdown: dict[str, int] = {}
    for attack in attacks:
        todo = robust.nonzero().squeeze(1)
        if todo.numel() == 0:
            breakdown[attack.name] = breakdown.get(attack.name, 0)
            continue
        candidate = attack(model, x[todo], y[todo])
        with preserved_state(model, mode=False), torch.no_grad():
            fooled = model(candidate).argmax(1) != y[todo]
        x_adv[todo[fooled]] = candidate[fooled]
        robust[todo[fooled]] = False
        breakdown[attack.name] = breakdown.get(attack.name, 0) + int(fooled.sum())
    return x_adv, breakdown


class WorstCase(Attack):
    """The per-example worst case over several attacks, itself an attack (as AutoAttack's standard
    evaluation): each attack runs only on the examples still correctly classified, so the result is in
    the ball of whichever attack produced it."""

    def __init__(self, *, attacks: Sequence[Attack]) -> None:
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise ValueError(f"attacks must be a non-empty list of kernel_reg attacks, got {attacks!r}")
        self.attacks = list(attacks)
        self.name = " + ".join(a.name for a in self.attacks)

    def check_inputs(self, x: torch.Tensor) -> None:
        for attack in self.attacks:
            attack.check_inputs(x)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return worst_case(model, self.attacks, x, y)[0]


def strong(
    *,
    norm: str,
    eps: float,
    square: bool = False,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    queries: int = 5000,
    clip: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> WorstCase:
    """APGD-CE, then APGD-T (targeted DLR), then optionally Square, each on what is still unbroken."""
    members: list[Attack] = [
        APGD(norm=norm, eps=eps, loss="ce", steps=steps, restarts=restarts, clip=clip, generator=generator),
        APGD(norm=norm, eps=eps, loss="dlr", targeted=True, n_target_classes=n_target_classes, steps=steps,
             clip=clip, generator=generator),
    ]  # fmt: skip
    if square:
        members.append(Square(norm=norm, eps=eps, queries=queries, clip=clip, generator=generator))
    return WorstCase(attacks=members)
