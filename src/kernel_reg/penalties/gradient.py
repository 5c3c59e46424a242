"""Penalties on input gradients: ||grad f||^2 (a supremum over the batch) and grad-l2 / grad-l1 (the
loss gradient)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import check_choice, check_logits
from ..deprecation import old_arguments
from ..distributed import SINGLE, Group
from .base import (
    Penalty,
    SupremumPenalty,
    _selected_class_gradients,
    check_method,
    class_input_gradients,
    finite_difference,
)


class GradientPenalty(SupremumPenalty):
    """||grad f||^2, the supremum gradient penalty (Bietti, Mialon, Chen and Mairal, ICML 2019):

        lmbda * sum_j max_i ||grad_x f_j(x_i)||_2^2 = lmbda * sum_j ||grad_x f_j(x_{i_j})||_2^2,
        i_j = argmax_i ||grad_x f_j(x_i)||_2^2.

    The search takes the per-class input gradients of the batch (one forward, k input-only backward
    passes); the k winners are recomputed with a graph for double backpropagation.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
        method: "exact" (default: double backpropagation) or "finite-difference": the same value, its
            parameter gradient from a finite difference of step h along the unit input gradient (Finlay and
            Oberman, 2019; ``base.finite_difference``), no double backward.
        h: the finite-difference step, > 0 (default 1.0; bench/README.md gives the cosine to the exact
            parameter gradient per h).
        group: the process group (default: one process; see ``SupremumPenalty``).

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Example:
        >>> penalty = GradientPenalty(lmbda=0.1)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
        >>> loss.backward()
    """

    name = "gradient-penalty"

    @old_arguments(("lmbda",))
    def __init__(self, *, lmbda: float = 0.1, method: str = "exact", h: float = 1.0, group: Group = SINGLE) -> None:
        super().__init__(lmbda=lmbda, group=group)
        self.method, self.h = check_method(method, h)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Per class, the largest ||grad_x f_j(x_i)||^2 (k,), and its example and gradient ((k,), (k, *shape))."""
        _, grads = class_input_gradients(model, x)  # (n, k, *shape)
        scores, winners = grads.flatten(2).pow(2).sum(2).max(0)  # (k,) each
        return scores, (winners, grads[winners, torch.arange(len(winners), device=x.device)])

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """||grad_x f_j(x_{i_j})||^2 for each class j (k,): by double backpropagation, or ("finite-difference")
        with the gradient of ``finite_difference`` (two forward passes of the k winners, no double backward)."""
        examples, grads = winners
        if self.method == "exact":
            return _selected_class_gradients(model, x[examples]).flatten(1).pow(2).sum(1)
        k = len(examples)
        norm = grads.flatten(1).norm(dim=1)
        direction = grads / norm.clamp_min(torch.finfo(grads.dtype).tiny).view(-1, *[1] * (grads.dim() - 1))
        logits = model(torch.cat([x[examples] + self.h * direction, x[examples]]))
        plus, base = logits[:k].diagonal(), logits[k:].diagonal()
        return finite_difference(norm.pow(2), 2 * norm, plus, base, self.h)


class LossGradientPenalty(Penalty):
    """grad-l2 / grad-l1, the loss-gradient penalties compared in Bietti, Mialon, Chen and Mairal (ICML 2019)
    (double backpropagation, Drucker and LeCun, 1992):

        lmbda / n * sum_i ||grad_x l(f(x_i), y_i)||_2^2   (norm "l2")   or
        lmbda / n * sum_i ||grad_x l(f(x_i), y_i)||_1     (norm "l1"),

    l the per-example cross-entropy. Needs the labels y. One forward and one backward pass with a graph
    for double backpropagation. Named "loss-gradl2" or "loss-gradl1". Given the caller's ``logits`` =
    model(x) (x requiring grad), it skips its own forward pass and shares the caller's graph.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
        norm: "l2" (default: the squared l2 norm) or "l1".
        method: "exact" (default: double backpropagation) or, with norm "l2" only, "finite-difference":
            the same value, its parameter gradient from a finite difference of step h along the unit input
            gradient (Finlay and Oberman, 2019; ``base.finite_difference``), no double backward.
        h: the finite-difference step, > 0 (default 1.0; bench/README.md gives the cosine to the exact
            parameter gradient per h).

    Shape:
        x: (n, *shape); y: (n,) class indices, required; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Raises:
        ValueError: when y is None or not of shape (n,).

    Example:
        >>> penalty = LossGradientPenalty(lmbda=0.1, norm="l2")
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
        >>> x.requires_grad_(True)  # or, one forward pass for both terms:
        >>> logits = model(x)
        >>> loss = F.cross_entropy(logits, y) + penalty(model, x, y, logits=logits)
    """

    reuses_logits = True

    @old_arguments(("lmbda", "norm"))
    def __init__(self, *, lmbda: float = 0.1, norm: str = "l2", method: str = "exact", h: float = 1.0) -> None:
        super().__init__(lmbda=lmbda)
        self.norm = check_choice("norm", norm, ("l2", "l1"))
        self.method, self.h = check_method(method, h)
        if self.method != "exact" and norm != "l2":
            raise ValueError("method='finite-difference' approximates the squared l2 norm: use norm='l2'")
        self.name = f"loss-grad{norm}"

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ValueError unless y has the shape (n,)."""
        if y is None or y.shape != x.shape[:1]:
            got = "none" if y is None else f"shape {tuple(y.shape)}"
            raise ValueError(f"{self.name} needs the labels y of shape ({x.shape[0]},), got {got}")

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """mean_i ||grad_x l(f(x_i), y_i)||_2^2 (or ||.||_1), after a forward pass of its own."""
        x_in = x.requires_grad_(True)
        return self.from_logits(model, x_in, y, check_logits(model(x_in), x.shape[0]))

    def from_logits(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, logits: torch.Tensor
    ) -> torch.Tensor:
        """mean_i ||grad_x l(f(x_i), y_i)||_2^2 (or ||.||_1) from logits = model(x), x requiring grad: their
        graph is kept for the caller's backward pass, which it shares ("exact": the double backward; or the
        finite difference's base term l(x_i), so that only x + h d needs a forward pass of its own)."""
        assert y is not None  # check_inputs
        exact = self.method == "exact"
        losses = F.cross_entropy(logits, y, reduction="none")  # l(x_i), (n,)
        grads = torch.autograd.grad(losses.sum(), x, create_graph=exact, retain_graph=True, allow_unused=True)[0]
        if grads is None:
            raise ValueError(f"{self.name}: the logits given do not depend on x; pass model(x) or leave them out")
        if not exact:  # the finite difference along the unit input gradient d, from the base term l(x_i)
            norm = grads.flatten(1).norm(dim=1)
            direction = grads / norm.clamp_min(torch.finfo(grads.dtype).tiny).view(-1, *[1] * (grads.dim() - 1))
            plus = F.cross_entropy(model(x.detach() + self.h * direction), y, reduction="none")
            return finite_difference(norm.pow(2), 2 * norm, plus, losses, self.h).mean()
        grads = grads.flatten(1)
        per_example = grads.pow(2).sum(1) if self.norm == "l2" else grads.abs().sum(1)
        return per_example.mean()
