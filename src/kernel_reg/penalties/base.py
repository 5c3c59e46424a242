"""The penalty contract, the supremum-penalty base, per-class input gradients, and FirstExamples."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..arguments import (
    check_batch,
    check_choice,
    check_int,
    check_logits,
    check_nonnegative,
    check_positive,
    describe,
)
from ..distributed import SINGLE, Group
from ..guard import preserved_state, uncompiled


class Penalty:
    """The contract of every penalty: ``penalty(model, x, y) -> lmbda * value``, a scalar to add to the loss.

    The model runs in the caller's train/eval mode; its flags, BatchNorm statistics and the caller's
    tensors are left as they were. ``name`` names the penalty; ``repr`` shows its hyperparameters.
    Subclasses implement ``unweighted`` (and ``check_inputs``).

    Args (keyword-only):
        lmbda: the weight, a finite number >= 0 (0 still computes the penalty, times 0); subclasses add
            their own hyperparameters.

    Shape:
        x: (n, *shape), the inputs; y: (n,) class indices, or None (only the penalties that need labels
        use them); model(x): logits (n, k).

    Returns:
        A scalar tensor, lmbda * value, in the model's dtype, with a graph to the model's parameters, also
        when called under ``torch.no_grad()``.

    Raises:
        ValueError: for inputs the penalty is not defined on (``check_inputs``), or a model that does not
            return logits (n, k).
    """

    name = "penalty"
    reuses_logits = False  # whether ``from_logits`` replaces the penalty's own forward pass at x

    def __init__(self, *, lmbda: float) -> None:
        self.lmbda = check_nonnegative("lmbda", lmbda)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """lmbda * unweighted(model, x, y), after ``check_inputs``, with gradients enabled, model guarded.

        ``logits``: model(x) from the caller's own forward pass, with its graph to x (which then requires
        grad) and to the parameters, or None. A penalty that ``reuses_logits`` differentiates them
        (``from_logits``) instead of running its own forward pass at x, so the training step saves that
        pass and backpropagates once through the shared graph; the others ignore them.
        """
        check_batch(self.name, x, y)
        model = uncompiled(model)  # the penalties differentiate input gradients: create_graph
        self.check_inputs(x, y)
        y = None if y is None else y.detach()
        with torch.enable_grad(), preserved_state(model):
            if logits is None or not self.reuses_logits:
                return self.lmbda * self.unweighted(model, x.detach(), y)
            logits = check_logits(logits, x.shape[0])
            if not (x.requires_grad and logits.requires_grad):
                raise ValueError(
                    f"{self.name}: the logits must come from model(x) with x.requires_grad set before that pass "
                    f"(x.requires_grad={x.requires_grad}, logits.requires_grad={logits.requires_grad}); "
                    "or leave logits out"
                )
            return self.lmbda * self.from_logits(model, x, y, logits)

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ValueError for inputs x (n, *shape) and labels y (n,) or None the penalty is not defined on
        (no-op here)."""

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The penalty without its weight, a scalar tensor (model and tensors already guarded, x detached)."""
        raise NotImplementedError

    def from_logits(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, logits: torch.Tensor
    ) -> torch.Tensor:
        """``unweighted`` from the caller's logits = model(x) (n, k), x requiring grad (penalties that
        ``reuses_logits`` only)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return describe(self)


def _check_images(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{name} deforms images: x must be a batch (n, C, H, W), got shape {tuple(x.shape)}; "
            "reshape flat inputs to images or use a penalty without deformations"
        )


class SupremumPenalty(Penalty):
    """lmbda * sum_j max_i s_j(x_i): a supremum over the batch for each class j = 1..k.

    Two passes: ``search`` finds, without a parameter graph, each class's maximiser and its score
    (k,); ``terms`` recomputes the k winning terms with their graph. The argmax is a constant, so this is
    the exact gradient of the definition at a fraction of the cost of a graph through the whole search.
    On several processes (``group``, see ``distributed.Group``) the maximiser is sought over the global
    batch. Labels are not used.

    Args (keyword-only):
        lmbda: the weight, >= 0.
        group: the process group (default ``SINGLE``: one process); with several, the rank whose example
            wins a class keeps its term (``distributed.Group.supremum_sum``).

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        A scalar tensor, lmbda * sum_j s_j(x_{i_j}), with a graph to the model's parameters.
    """

    def __init__(self, *, lmbda: float, group: Group = SINGLE) -> None:
        super().__init__(lmbda=lmbda)
        self.group = group

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(scores, winners): per class, the largest score s_j(x_{i_j}) (k,), and what ``terms`` needs to
        recompute the winners."""
        raise NotImplementedError

    def terms(self, model: nn.Module, x: torch.Tensor, winners: Any) -> torch.Tensor:
        """The winning term of each class (k,), with its graph."""
        raise NotImplementedError

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """sum_j of the winning terms, over the global batch on several processes."""
        scores, winners = self.search(model, x)
        return self.group.supremum_sum(self.terms(model, x, winners), scores.detach())

    def class_terms(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The unweighted winning term s_j(x_{i_j}) of each class on this batch, on this process alone.

        Shape:
            x: (n, *shape); output: (k,), with a graph to the model's parameters.
        """
        self.check_inputs(x, None)
        with torch.enable_grad(), preserved_state(model):
            x = x.detach()
            return self.terms(model, x, self.search(model, x)[1])


def class_input_gradients(
    model: nn.Module, x: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-class input gradients grads[i, j] = grad_x f_j(x_i).

    One forward pass, then k input-only backward passes on the retained graph (no parameter
    gradients are formed unless ``create_graph``). Exact per example when the examples do not interact
    (no BatchNorm in train mode): each is the gradient of sum_i f_j(x_i).

    Args:
        model: maps x to logits (n, k).
        x: the inputs, (n, *shape).
        create_graph: keep a graph through the gradients (for double backpropagation); default False.

    Shape:
        x: (n, *shape); logits: (n, k); grads: (n, k, *shape).

    Returns:
        (logits, grads).
    """
    x_in = x.detach().requires_grad_(True)
    logits = check_logits(model(x_in), x.shape[0])
    k = logits.shape[1]
    cotangents = torch.eye(k, dtype=logits.dtype, device=logits.device)
    grads = [
        torch.autograd.grad(
            logits,
            x_in,
            grad_outputs=cotangents[j].expand_as(logits),
            retain_graph=create_graph or j < k - 1,
            create_graph=create_graph,
        )[0]
        for j in range(k)
    ]
    return logits, torch.stack(grads, dim=1)


def _selected_class_gradients(model: nn.Module, x_selected: torch.Tensor) -> torch.Tensor:
    """grad_x f_j(x_selected[j]) for j = 0..k-1, with a graph for double backpropagation: (k, *shape)."""
    x_in = x_selected.detach().requires_grad_(True)
    logits = check_logits(model(x_in), x_in.shape[0])
    return torch.autograd.grad(logits.diagonal().sum(), x_in, create_graph=True)[0]


METHODS = ("exact", "finite-difference")


def check_method(method: str, h: float) -> tuple[str, float]:
    """The gradient method of an input-gradient penalty and its finite-difference step."""
    return check_choice("method", method, METHODS), check_positive("h", h)


def finite_difference(
    value: torch.Tensor, coefficient: torch.Tensor, plus: torch.Tensor, base: torch.Tensor, h: float
) -> torch.Tensor:
    """``value`` (the exact penalty terms, without a graph) carrying the gradient of
    sum(coefficient * (plus - base) / h) with respect to the parameters, coefficient held constant.

    For a term ||g||^2, g = grad_x phi(x): with d = g / ||g||, coefficient 2 ||g||, plus phi(x + h d) and
    base phi(x), that gradient is the finite difference (2 / h) ||g|| (grad_theta phi(x + h d) -
    grad_theta phi(x)) of grad_theta ||g||^2 = 2 ||g|| grad_theta <g, d> (Finlay and Oberman, "Scaleable
    input gradient regularization for adversarial robustness", 2019): two forward passes with a graph and no
    double backward. Shape: value (n,); coefficient, plus, base (n, *) summed over the trailing axes.
    """
    surrogate = (
        (coefficient * (plus - base) / h).flatten(1).sum(1) if plus.dim() > 1 else coefficient * (plus - base) / h
    )
    return value.detach() + surrogate - surrogate.detach()


class FirstExamples(Penalty):
    """A penalty applied to the first ``count`` examples of each batch only (for costly penalties, as the
    original's ``stability_ex_per_batch``): ``penalty(model, x[:count], y[:count])``, weighted by the
    penalty's own ``lmbda`` (``lmbda`` and ``name`` are the wrapped penalty's).

    Args (keyword-only):
        penalty: the penalty to apply.
        count: the number of leading examples it sees, >= 1 (all of a smaller batch).

    Shape:
        x: (n, *shape); y: (n,) or None; the wrapped penalty gets x[:count], y[:count].

    Returns:
        The wrapped penalty's scalar on those examples.

    Example:
        >>> penalty = FirstExamples(penalty=DeformationStabilityPenalty(lmbda=0.1), count=32)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
    """

    def __init__(self, *, penalty: Penalty, count: int) -> None:
        self.penalty = penalty
        self.count = check_int("count", count)
        self.lmbda = penalty.lmbda
        self.name = penalty.name

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``penalty(model, x[:count], y[:count])`` (``logits`` ignored: x[:count] is not in their graph)."""
        return self.penalty(model, x[: self.count], None if y is None else y[: self.count])
