"""Adversarial attacks: ``attack(model, x, y) -> x_adv``.

Attacks maximise the cross-entropy of the model in eval mode (dropout off, BatchNorm on its running
statistics), take gradients with respect to the inputs only, leave the model's mode, its BatchNorm
statistics and the caller's tensors as they were, and work inside ``torch.no_grad()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._guards import check_clip, check_int, check_logits, check_positive, normalize_l2, preserved_state, project_l2


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
    ) -> None:
        self.eps = check_positive("eps", eps)
        self.steps = check_int("steps", steps)
        self.step_size = check_positive("step_size", step_size)
        self.random_start = bool(random_start)
        self.restarts = check_int("restarts", restarts)
        self.clip = check_clip(clip)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
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
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, best)
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
    ) -> None:
        eps = check_positive("eps", eps)
        steps = check_int("steps", steps)
        step_size = 1.5 * eps / steps if step_size is None else step_size
        super().__init__(eps, steps, step_size, random_start, restarts, clip)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        direction = normalize_l2(torch.randn_like(x))
        radius = self.eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / x[0].numel())
        return direction * radius.view(-1, *([1] * (x.dim() - 1)))

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
    ) -> None:
        super().__init__(eps, steps, step_size, random_start, restarts, clip)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        return (2 * torch.rand_like(x) - 1) * self.eps

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        return self.step_size * grad.sign()

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)
