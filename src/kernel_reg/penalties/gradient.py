"""Penalties on input gradients: ||grad f||^2 (a supremum over the batch) and grad-l2 / grad-l1 (the
loss gradient)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import check_choice, check_logits
from ..distributed import SINGLE, Group
from .base import Penalty, SupremumPenalty, _selected_class_gradients, class_input_gradients


class GradientPenalty(SupremumPenalty):
    """||grad f||^2, the supremum gradient penalty (Bietti, Mialon, Chen and Mairal, ICML 2019):

        lmbda * sum_j max_i ||grad_x f_j(x_i)||_2^2 = lmbda * sum_j ||grad_x f_j(x_{i_j})||_2^2,
        i_j = argmax_i ||grad_x f_j(x_i)||_2^2.

    The search takes the per-class input gradients of the batch (one forward, k input-only backward
    passes); the k winners are recomputed with a graph for double backpropagation.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
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

    def __init__(self, *, lmbda: float = 0.1, group: Group = SINGLE) -> None:
        super().__init__(lmbda=lmbda, group=group)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """max_i ||grad_x f_j(x_i)||_2^2 per class (k,), and the maximising example indices i_j (k,)."""
        _, grads = class_input_gradients(model, x)  # (n, k, *shape)
        scores, winners = grads.flatten(2).pow(2).sum(2).max(0)  # (k,) each
        return scores, winners

    def terms(self, model: nn.Module, x: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
        """||grad_x f_j(x_{i_j})||_2^2 for each class j (k,), with a graph for double backpropagation."""
        return _selected_class_gradients(model, x[winners]).flatten(1).pow(2).sum(1)


class LossGradientPenalty(Penalty):
    """grad-l2 / grad-l1, the loss-gradient penalties compared in Bietti, Mialon, Chen and Mairal (ICML 2019)
    (double backpropagation, Drucker and LeCun, 1992):

        lmbda / n * sum_i ||grad_x l(f(x_i), y_i)||_2^2   (norm "l2")   or
        lmbda / n * sum_i ||grad_x l(f(x_i), y_i)||_1     (norm "l1"),

    l the per-example cross-entropy. Needs the labels y. One forward and one backward pass with a graph
    for double backpropagation. Named "loss-gradl2" or "loss-gradl1".

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
        norm: "l2" (default: the squared l2 norm) or "l1".

    Shape:
        x: (n, *shape); y: (n,) class indices, required; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Raises:
        ValueError: when y is None or not of shape (n,).

    Example:
        >>> penalty = LossGradientPenalty(lmbda=0.1, norm="l2")
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
    """

    def __init__(self, *, lmbda: float = 0.1, norm: str = "l2") -> None:
        super().__init__(lmbda=lmbda)
        self.norm = check_choice("norm", norm, ("l2", "l1"))
        self.name = f"loss-grad{norm}"

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ValueError unless y has the shape (n,)."""
        if y is None or y.shape != x.shape[:1]:
            got = "none" if y is None else f"shape {tuple(y.shape)}"
            raise ValueError(f"{self.name} needs the labels y of shape ({x.shape[0]},), got {got}")

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """mean_i ||grad_x l(f(x_i), y_i)||_2^2 (or ||.||_1)."""
        assert y is not None  # check_inputs
        x_in = x.requires_grad_(True)
        logits = check_logits(model(x_in), x.shape[0])
        loss = F.cross_entropy(logits, y, reduction="sum")
        grads = torch.autograd.grad(loss, x_in, create_graph=True)[0].flatten(1)
        per_example = grads.pow(2).sum(1) if self.norm == "l2" else grads.abs().sum(1)
        return per_example.mean()
