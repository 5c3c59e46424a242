"""Auto-PGD (Croce & Hein, ICML 2020) with the CE, DLR and targeted DLR losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import check_choice, check_int, check_logits, check_positive
from ..tensors import margin, per_example
from .base import BallAttack


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The difference-of-logits-ratio loss (Croce & Hein, ICML 2020), per example:

        DLR(z, y) = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12),

    z_pi1 >= z_pi2 >= ... the sorted logits. Invariant to shifts and positive rescalings of the logits.

    Args:
        logits: z, (n, k) with k >= 3.
        y: class indices, (n,).

    Returns:
        The losses, (n,): positive exactly when another class has a larger logit than y.
    """
    ordered = logits.sort(dim=1, descending=True).values
    return -margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The targeted DLR loss of APGD-T (Croce & Hein, ICML 2020), per example:

        DLR_t(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12),

    z_pi1 >= z_pi2 >= ... the sorted logits; maximising it pushes the logit of the target t above z_y.

    Args:
        logits: z, (n, k) with k >= 4.
        y: class indices, (n,).
        target: target class indices, (n,).

    Returns:
        The losses, (n,).
    """
    ordered = logits.sort(dim=1, descending=True).values
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return -gap / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def _apgd_checkpoints(steps: int) -> list[int]:
    """Iterations w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(q * steps, 9)) for q in p[1:]}  # round: 0.57 * 100 is 57.00000000000001
    return sorted(w for w in marks if 0 < w < steps)


class APGD(BallAttack):
    """Auto-PGD (Croce & Hein, ICML 2020), untargeted (loss "ce" or "dlr") or targeted (APGD-T: the
    targeted DLR loss towards each of the ``n_target_classes`` highest other classes in turn).

    From a point uniform in the ball, with eta (per example) initially 2 eps and P = Proj on the ball then
    the clip box, steps

        z = P(x_k + eta * direction(grad L(x_k))),
        x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1}))   (z alone at the first step),

    direction(g) = g / ||g||_2 (l2) or sign(g) (linf), L the per-example loss (maximised). At the
    checkpoints w_j = ceil(p_j * steps) (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)),
    eta is halved and the iterate reset to the best point when the loss increased in fewer than
    rho * (w_j - w_{j-1}) of the steps since w_{j-1}, or when eta was not halved at w_{j-1} and the best
    loss has not improved since. Per example, the first misclassified point found is kept (else the point
    of largest loss); restarts and targets run only on the examples still unbroken. Cost: at most
    (restarts * targets) * (steps + 1) forward and backward passes, targets = min(n_target_classes, k - 1)
    for APGD-T and 1 otherwise.

    Args (keyword-only):
        norm: "linf" (default) or "l2", the ball.
        eps: its radius, > 0 (default 8/255).
        loss: "ce" (default, cross-entropy) or "dlr" (``dlr_loss``, needs k >= 3 classes).
        targeted: APGD-T, the targeted DLR loss (``targeted_dlr_loss``, needs k >= 4 and loss="dlr";
            default False). The name is "APGD-T", else "APGD-CE" or "APGD-DLR".
        n_target_classes: APGD-T only: the number of target classes, >= 1 (default 9), the highest-ranked
            other classes on the clean input, capped at k - 1.
        steps: iterations per run, >= 1 (default 100).
        restarts: runs per target (from new random points), >= 1 (default 1).
        clip: the input range (lo, hi) x_adv stays in, or None (default (0, 1)).
        rho: the checkpoint's fraction of increasing steps, > 0 (default 0.75, the paper's).
        alpha: the momentum weight, > 0 (default 0.75, the paper's; 1 is no momentum).
        generator: the source of the random starts (None, default: the global RNG).

    Shape:
        x: (n, *shape); y: (n,) class indices; model(x): logits (n, k).

    Returns:
        x_adv (n, *shape), detached, with ||x_adv - x|| <= eps and x_adv in the clip box; x itself for the
        examples misclassified from the start.

    Raises:
        ValueError: targeted with loss "ce", or the DLR losses with too few classes.

    Example:
        >>> apgd_ce = attacks.APGD(norm="l2", eps=0.5)
        >>> apgd_t = attacks.APGD(norm="l2", eps=0.5, loss="dlr", targeted=True, n_target_classes=3)
        >>> x_adv = apgd_t(model, x, y)
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
        """Every restart (for every target) on the examples still unbroken; see the class docstring."""
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
