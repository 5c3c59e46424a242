"""Adversarial attacks: ``attack(model, x, y) -> x_adv``.

Attacks maximise the cross-entropy of the model in eval mode (dropout off, BatchNorm on its running
statistics), take gradients with respect to the inputs only, leave the model's mode, its BatchNorm
statistics and the caller's tensors as they were, and work inside ``torch.no_grad()``.
"""

from __future__ import annotations

import math

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
    normalize_l2,
    per_example,
    preserved_state,
    project_l2,
)
from .distributed import SINGLE, Group


class _PGD:
    """Projected gradient ascent on the cross-entropy, shared by the l2 and linf attacks.

    With ``restarts`` > 1, each example keeps the worst case over the restarts: a misclassified
    point beats a correctly classified one, then the larger loss wins.
    """

    def __init__(
        self,
        eps: float,
        steps: int,
        step_size: float,
        random_start: bool,
        restarts: int,
        clip: tuple[float, float] | None,
        group: Group,
    ) -> None:
        self.group = group
        self.eps = check_positive("eps", eps)
        self.steps = check_int("steps", steps)
        self.step_size = check_positive("step_size", step_size)
        self.random_start = bool(random_start)
        self.restarts = check_int("restarts", restarts)
        self.clip = check_clip(clip)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """A random start: per-example noise drawn through the group (see ``distributed.Group.draw``)."""
        return self.group.draw(lambda count: self._noise(count, x), x.shape[0])

    def _noise(self, count: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _constrain(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Projection on the ball, then on the valid input range (which keeps it inside the ball)."""
        delta = self._project(delta)
        if self.clip is not None:
            delta = (x + delta).clamp(*self.clip) - x
        return delta

    def _ascend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = self._constrain(x, self._start(x) if self.random_start else torch.zeros_like(x))
        for _ in range(self.steps):
            delta.requires_grad_(True)
            logits = check_logits(model(x + delta), x.shape[0])
            grad = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), delta)[0]
            delta = self._constrain(x, delta.detach() + self._step(grad))
        return x + delta

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        check_inside_clip(x, self.clip, type(self).__name__)
        with preserved_state(model, mode=False), torch.enable_grad():
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


class PGDL2(_PGD):
    """PGD in the l2 ball: normalised gradient steps of ``step_size`` (default 1.5 eps / steps, as the
    original), projection on {||delta||_2 <= eps}, optional uniform random start in the ball."""

    def __init__(
        self,
        eps: float = 1.0,
        steps: int = 5,
        step_size: float | None = None,
        random_start: bool = False,
        restarts: int = 1,
        clip: tuple[float, float] | None = (0.0, 1.0),
        group: Group = SINGLE,
    ) -> None:
        eps = check_positive("eps", eps)
        steps = check_int("steps", steps)
        step_size = 1.5 * eps / steps if step_size is None else step_size
        super().__init__(eps, steps, step_size, random_start, restarts, clip, group)

    def _noise(self, count: int, x: torch.Tensor) -> torch.Tensor:
        """Uniform in the l2 ball: a Gaussian direction and radius eps * U^(1/d)."""
        direction = normalize_l2(torch.randn(count, *x.shape[1:], device=x.device, dtype=x.dtype))
        radius = self.eps * torch.rand(count, device=x.device, dtype=x.dtype) ** (1.0 / x[0].numel())
        return direction * per_example(radius, x)

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        return self.step_size * normalize_l2(grad)

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        return project_l2(delta, self.eps)


class PGDLinf(_PGD):
    """PGD in the linf ball: sign steps of ``step_size``, clamping to [-eps, eps], uniform random start."""

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 5,
        step_size: float = 0.01,
        random_start: bool = True,
        restarts: int = 1,
        clip: tuple[float, float] | None = (0.0, 1.0),
        group: Group = SINGLE,
    ) -> None:
        super().__init__(eps, steps, step_size, random_start, restarts, clip, group)

    def _noise(self, count: int, x: torch.Tensor) -> torch.Tensor:
        return (2 * torch.rand(count, *x.shape[1:], device=x.device, dtype=x.dtype) - 1) * self.eps

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        return self.step_size * grad.sign()

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)


# ---------------------------------------------------------------------------------------------
# Stronger evaluation attacks: APGD (Croce & Hein, 2020), Square (Andriushchenko et al., 2020),
# and the per-example worst case over several attacks.

NORMS = ("l2", "linf")


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


class APGD:
    """Auto-PGD (Croce & Hein, ICML 2020), untargeted (loss "ce" or "dlr") or targeted (APGD-T: the
    DLR loss towards each of the ``n_target_classes`` highest other classes in turn).

    From a random start, steps of size eta (initially 2 eps; sign of the gradient for linf, normalised
    gradient for l2) with momentum alpha = 0.75, projected on the ball and the input range. At the
    checkpoints w_j, eta is halved and the iterate reset to the best point when the loss increased in
    fewer than rho = 0.75 of the steps since w_{j-1}, or when eta was not halved at w_{j-1} and the best
    loss has not improved since. Per example, the first misclassified point found is kept (else the
    point of largest loss); restarts and targets run only on the examples still unbroken.
    """

    def __init__(
        self,
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
    ) -> None:
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = check_positive("eps", eps)
        self.loss = check_choice("loss", loss, ("ce", "dlr"))
        if targeted and loss != "dlr":
            raise ValueError(f"loss must be 'dlr' for the targeted attack, got {loss!r}")
        self.targeted = bool(targeted)
        self.n_target_classes = check_int("n_target_classes", n_target_classes)
        self.steps = check_int("steps", steps)
        self.restarts = check_int("restarts", restarts)
        self.clip = check_clip(clip)
        self.rho = check_positive("rho", rho)
        self.alpha = check_positive("alpha", alpha)

    @property
    def name(self) -> str:
        return f"APGD-{'T' if self.targeted else self.loss.upper()}"

    def _project(self, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        delta = x_new - x
        delta = project_l2(delta, self.eps) if self.norm == "l2" else delta.clamp(-self.eps, self.eps)
        return (x + delta).clamp(*self.clip) if self.clip is not None else x + delta

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return normalize_l2(grad) if self.norm == "l2" else grad.sign()

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "l2":
            return self._project(x, x + self.eps * normalize_l2(torch.randn_like(x)))
        return self._project(x, x + self.eps * (2 * torch.rand_like(x) - 1))

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
        x_cur = self._start(x)
        loss_cur, grad_cur, wrong = self._evaluate(model, x_cur, y, target)
        x_prev = x_cur
        x_best, loss_best, grad_best = x_cur, loss_cur, grad_cur
        broken, x_broken = wrong, x_cur
        increases = torch.zeros_like(eta)
        reduced_last = torch.ones_like(wrong)  # no "unchanged step size" test at the first checkpoint
        loss_best_last = loss_best
        window_start = 0
        for k in range(self.steps):
            z = self._project(x, x_cur + per_example(eta, x) * self._direction(grad_cur))
            if k > 0:
                z = self._project(x, x_cur + self.alpha * (z - x_cur) + (1 - self.alpha) * (x_cur - x_prev))
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

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        check_inside_clip(x, self.clip, self.name)
        with preserved_state(model, mode=False), torch.enable_grad():
            with torch.no_grad():
                clean = check_logits(model(x), x.shape[0])
            k = clean.shape[1]
            if self.loss == "dlr" and k < (4 if self.targeted else 3):
                raise ValueError(f"the {self.name} loss needs at least {4 if self.targeted else 3} classes, got {k}")
            x_adv = x.clone()
            broken = clean.argmax(1) != y
            ranking = clean.argsort(dim=1, descending=True)
            targets = (
                [ranking[:, i] for i in range(1, min(self.n_target_classes, k - 1) + 1)] if self.targeted else [None]
            )
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


class Square:
    """Square attack (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020): random search on the
    margin f_y - max_{j != y} f_j with square-shaped updates, using no gradients at all.

    linf: starts from vertical stripes of +-eps, then sets a random square (side sqrt(p H W)) of each
    channel to +-eps. l2: starts from a random point of the sphere, then moves the perturbation's mass
    in two random squares into the first, shaped by the meta-pattern, keeping ||delta||_2 = eps. A
    proposal is kept when it lowers the margin; examples stop once misclassified. p follows the
    paper's halving schedule from ``p_init`` (default 0.05 linf, 0.1 l2). Inputs are images (n, C, H, W).
    """

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 8 / 255,
        queries: int = 5000,
        p_init: float | None = None,
        clip: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = check_positive("eps", eps)
        self.queries = check_int("queries", queries)
        self.p_init = (0.05 if norm == "linf" else 0.1) if p_init is None else check_positive("p_init", p_init)
        self.clip = check_clip(clip)
        self.name = "Square"

    def _clip(self, x_adv: torch.Tensor) -> torch.Tensor:
        return x_adv.clamp(*self.clip) if self.clip is not None else x_adv

    def _windows(
        self, n: int, height: int, width: int, side: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random side x side square per example: its mask (n, 1, H, W), top rows and left columns (n,)."""
        top = torch.randint(0, height - side + 1, (n,), device=like.device)
        left = torch.randint(0, width - side + 1, (n,), device=like.device)
        rows = torch.arange(height, device=like.device)
        cols = torch.arange(width, device=like.device)
        in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side)
        in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side)
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(like.dtype), top, left

    def _propose(self, delta: torch.Tensor, side: int) -> torch.Tensor:
        n, channels, height, width = delta.shape
        if self.norm == "linf":
            window = self._windows(n, height, width, side, delta)[0]
            signs = self.eps * (2 * torch.randint(0, 2, (n, channels, 1, 1), device=delta.device) - 1).to(delta.dtype)
            return delta * (1 - window) + signs * window
        first, top, left = self._windows(n, height, width, side, delta)
        second = self._windows(n, height, width, side, delta)[0]
        both = torch.clamp(first + second, max=1.0)
        # the budget of both squares plus what the perturbation does not use goes into the first square
        budget = (self.eps**2 - delta.flatten(1).pow(2).sum(1) + (delta * both).flatten(1).pow(2).sum(1)).clamp_min(0)
        pattern = _meta_pattern(side, delta.device, delta.dtype)  # unit norm
        rows = torch.arange(height, device=delta.device)[None] - top[:, None]  # (n, H): row within the square
        cols = torch.arange(width, device=delta.device)[None] - left[:, None]
        placed = pattern[rows.clamp(0, side - 1)[:, :, None], cols.clamp(0, side - 1)[:, None, :]]
        placed = (placed * first[:, 0]).unsqueeze(1)  # (n, 1, H, W), zero outside the square
        signs = (2 * torch.randint(0, 2, (n, channels, 1, 1), device=delta.device) - 1).to(delta.dtype)
        scale = (budget / channels).sqrt()
        return delta * (1 - both) + per_example(scale, delta) * signs * placed

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        if x.dim() != 4:
            raise ValueError(f"Square needs image batches (n, C, H, W), got shape {tuple(x.shape)}")
        check_inside_clip(x, self.clip, self.name)
        n, channels, height, width = x.shape
        with preserved_state(model, mode=False), torch.no_grad():
            if self.norm == "linf":
                stripes = 2 * torch.randint(0, 2, (n, channels, 1, width), device=x.device) - 1
                delta = self.eps * stripes.to(x.dtype).expand(n, channels, height, width)
            else:
                delta = self.eps * normalize_l2(torch.randn_like(x))
            x_adv = self._clip(x + delta)
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
    model: nn.Module, attacks: list, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, int]]:
    """Run ``attacks`` in turn, each on the examples no earlier one has misclassified; returns the
    adversarial batch and how many examples each attack broke first (by its name)."""
    x, y = x.detach(), y.detach()
    for attack in attacks:  # fail before any attack runs, even if no example is left for a clipping one
        if isinstance(attack, (_PGD, APGD, Square)):
            check_inside_clip(x, attack.clip, getattr(attack, "name", type(attack).__name__))
    with preserved_state(model, mode=False), torch.no_grad():
        robust = model(x).argmax(1) == y
    x_adv = x.clone()
    breakdown: dict[str, int] = {}
    for attack in attacks:
        name = getattr(attack, "name", type(attack).__name__)
        todo = robust.nonzero().squeeze(1)
        if todo.numel() == 0:
            breakdown[name] = 0
            continue
        candidate = attack(model, x[todo], y[todo])
        with preserved_state(model, mode=False), torch.no_grad():
            fooled = model(candidate).argmax(1) != y[todo]
        x_adv[todo[fooled]] = candidate[fooled]
        robust[todo[fooled]] = False
        breakdown[name] = breakdown.get(name, 0) + int(fooled.sum())
    return x_adv, breakdown


class WorstCase:
    """The per-example worst case over several attacks, itself an attack (as AutoAttack's standard
    evaluation): each attack runs only on the examples still correctly classified."""

    def __init__(self, attacks: list) -> None:
        if not attacks:
            raise ValueError("attacks must be a non-empty list of attacks")
        self.attacks = list(attacks)
        self.name = " + ".join(getattr(a, "name", type(a).__name__) for a in self.attacks)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return worst_case(model, self.attacks, x, y)[0]


def strong(
    norm: str,
    eps: float,
    square: bool = False,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    queries: int = 5000,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> WorstCase:
    """APGD-CE, then APGD-T (targeted DLR), then optionally Square, each on what is still unbroken."""
    members: list = [
        APGD(norm, eps, "ce", steps=steps, restarts=restarts, clip=clip),
        APGD(norm, eps, "dlr", targeted=True, n_target_classes=n_target_classes, steps=steps, clip=clip),
    ]
    if square:
        members.append(Square(norm, eps, queries, clip=clip))
    return WorstCase(members)
