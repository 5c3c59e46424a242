"""Penalties on perturbed inputs: ||f||_delta^2 (adversarial perturbations of each class) and VAT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import check_int, check_logits, check_positive
from ..deprecation import old_arguments
from ..distributed import SINGLE, Group
from ..tensors import normalize_l2, project_l2, randn
from .base import Penalty, SupremumPenalty, class_input_gradients


def _own_class_logits(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """f_{classes[c]}(inputs[c, i]) for inputs (c, n, *shape): one logit per copy of the batch, (c, n)."""
    c, n = inputs.shape[:2]
    logits = model(inputs.flatten(0, 1)).view(c, n, -1)
    out: torch.Tensor = logits.gather(2, classes.view(c, 1, 1).expand(c, n, 1)).squeeze(2)
    return out


class AdversarialPerturbationPenalty(SupremumPenalty):
    """||f||_delta^2, the adversarial perturbation penalty (Bietti, Mialon, Chen and Mairal, ICML 2019).

    For each class j and example i, d_ij approximately maximises f_j(x_i + d) - f_j(x_i) over
    ||d||_2 <= eps by ``steps`` normalised gradient steps d <- Proj_eps(d + step_size * g / ||g||_2),
    g = grad_d f_j(x_i + d), from d = 0 (no clip box: the inputs may leave their range). With i_j the
    example of largest increase f_j(x_i + d_ij) - f_j(x_i),

        lmbda * sum_j (f_j(x_{i_j} + d_{i_j j}) - f_j(x_{i_j}))^2,

    gradients flowing through both terms (d_{i_j j} held constant).

    The first step, from d = 0, needs only the per-class input gradients of the clean batch (one forward,
    k input-only backward passes); the remaining steps - 1 forward k copies of the batch, in passes of
    whole classes of m examples (m = n, or ``candidates``). With ``candidates=m``, only the m examples of
    steepest ascent per class (largest ||grad_x f_j(x_i)||_2) continue after the first step: the search
    then costs about m / n of the exact one, and is exact when m >= n.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 1.0).
        eps: the radius of the l2 ball, > 0 (default 1.0).
        steps: the number of ascent steps, >= 1 (default 5).
        step_size: the step length, > 0; None (default): 1.5 eps / steps.
        chunk_size: the largest number of examples per forward pass of the search, >= 1, rounded down to
            whole classes of m examples but at least one class per pass; None (default): one class per
            pass.
        candidates: m, the examples per class kept after the first step, >= 1; None (default): all n.
        group: the process group (default: one process; see ``SupremumPenalty``).

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Example:
        >>> penalty = AdversarialPerturbationPenalty(lmbda=1.0, eps=1.0, steps=5, candidates=8)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
    """

    name = "adv-perturbation"

    @old_arguments(("eps", "steps", "step_size", "lmbda", "chunk_size"))
    def __init__(
        self,
        *,
        lmbda: float = 1.0,
        eps: float = 1.0,
        steps: int = 5,
        step_size: float | None = None,
        chunk_size: int | None = None,
        candidates: int | None = None,
        group: Group = SINGLE,
    ) -> None:
        super().__init__(lmbda=lmbda, group=group)
        self.eps = check_positive("eps", eps)
        self.steps = check_int("steps", steps)
        self.step_size = 1.5 * self.eps / self.steps if step_size is None else check_positive("step_size", step_size)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size)
        self.candidates = None if candidates is None else check_int("candidates", candidates)

    def _step(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One normalised ascent step and projection, for a batch of (pair, *shape) perturbations."""
        return project_l2(delta + self.step_size * normalize_l2(grad), self.eps)

    def _ascend(self, model: nn.Module, x_pool: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The remaining steps for pairs (class j, x_pool[j, i]) from ``delta`` (k, m, *shape): the final
        perturbations and f_j(x_pool[j, i] + d) (k, m)."""
        k, m = x_pool.shape[:2]
        classes_per_pass = max(1, (self.chunk_size or m) // m)
        deltas, values = [], []
        for classes in torch.split(torch.arange(k, device=x_pool.device), classes_per_pass):
            x_rep, d = x_pool[classes], delta[classes]
            for _ in range(self.steps - 1):
                d.requires_grad_(True)
                gain = _own_class_logits(model, x_rep + d, classes).sum()
                grad = torch.autograd.grad(gain, d)[0]
                d = self._step(d.detach().flatten(0, 1), grad.flatten(0, 1)).view_as(x_rep)
            with torch.no_grad():
                values.append(_own_class_logits(model, x_rep + d, classes))
            deltas.append(d)
        return torch.cat(deltas), torch.cat(values)

    def search(
        self, model: nn.Module, x: torch.Tensor, first: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The largest increase max_i f_j(x_i + d_ij) - f_j(x_i) of each class (k,), and its example and
        perturbation ((k, *shape) each). ``first``: the clean logits (n, k) and per-class input gradients
        (n, k, *shape) of x when the caller has them (``class_input_gradients``)."""
        n = x.shape[0]
        clean, grads = class_input_gradients(model, x) if first is None else first
        clean, k = clean.detach(), clean.shape[1]
        classes = torch.arange(k, device=x.device)
        if self.candidates is not None and self.candidates < n:
            pool = grads.flatten(2).norm(dim=2).topk(self.candidates, dim=0).indices.T  # (k, m)
        else:
            pool = torch.arange(n, device=x.device).expand(k, n)
        pool_grads = grads.transpose(0, 1)[classes[:, None], pool]  # (k, m, *shape): grad f_j at pool[j]
        delta = self._step(torch.zeros_like(pool_grads).flatten(0, 1), pool_grads.flatten(0, 1)).view_as(pool_grads)
        deltas, perturbed = self._ascend(model, x[pool], delta)  # (k, m, *shape), (k, m)
        scores, best = (perturbed - clean.T.gather(1, pool)).max(1)  # (k,)
        return scores, (x[pool[classes, best]], deltas[classes, best].detach())

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(f_j(x_{i_j} + d_{i_j j}) - f_j(x_{i_j}))^2 for each class j (k,)."""
        x_sel, delta = winners
        k = x_sel.shape[0]
        logits = model(torch.cat([x_sel + delta, x_sel]))
        out: torch.Tensor = (logits[:k].diagonal() - logits[k:].diagonal()).pow(2)
        return out


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over examples of KL(p || q) for logits (n, k)."""
    return F.kl_div(F.log_softmax(q_logits, 1), F.log_softmax(p_logits, 1), log_target=True, reduction="batchmean")


class VATPenalty(Penalty):
    """Virtual adversarial training (Miyato, Maeda, Koyama and Ishii, TPAMI 2018):

        lmbda * mean_i KL(p(.|x_i) || p(.|x_i + r_i)),  r_i = eps * d_i / ||d_i||_2,

    p(.|x) = softmax(f(x)), d_i from ``steps`` power-iteration steps
    d <- grad_r KL(p(.|x) || p(.|x + r)) at r = xi d / ||d||_2, from a Gaussian draw (the global RNG).
    As in VAT, p(.|x) is held constant (no gradient through the clean prediction) and r_i too. Labels are
    not used. ``lmbda`` is the original's ``--vat_alpha``.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 1.0).
        eps: the norm of the adversarial direction r_i, > 0 (default 1.0).
        xi: the finite-difference radius of the power iteration, > 0 (default 1e-6).
        steps: power-iteration steps, >= 1 (default 1).
        group: the process group; on several, the Gaussian draws are made for the global batch.

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Example:
        >>> penalty = VATPenalty(lmbda=1.0, eps=1.0)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x)
    """

    name = "vat"

    @old_arguments(("alpha", "eps", "xi", "iters"), renamed={"alpha": "lmbda", "iters": "steps"})
    def __init__(
        self, *, lmbda: float = 1.0, eps: float = 1.0, xi: float = 1e-6, steps: int = 1, group: Group = SINGLE
    ) -> None:
        super().__init__(lmbda=lmbda)
        self.eps = check_positive("eps", eps)
        self.xi = check_positive("xi", xi)
        self.steps = check_int("steps", steps)
        self.group = group

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """mean_i KL(p(.|x_i) || p(.|x_i + r_i)), the power iteration included."""
        with torch.no_grad():
            clean = check_logits(model(x), x.shape[0])
        direction = self.group.draw(lambda count: randn((count, *x.shape[1:]), x), len(x))
        for _ in range(self.steps):
            probe = (self.xi * normalize_l2(direction)).requires_grad_(True)
            direction = torch.autograd.grad(_kl(clean, model(x + probe)), probe)[0]
        return _kl(clean, model(x + self.eps * normalize_l2(direction)))
