"""Certified l2 robustness from Lipschitz bounds: the certified radius of each prediction and the certified
accuracy of a batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arguments import (
    check_batch,
    check_labels,
    check_logits,
    check_nonnegative,
    check_positive,
)
from ..guard import preserved_state, uncompiled
from ..tensors import margin
from .pairwise import pairwise_lipschitz


def certified_radius(logits: torch.Tensor, y: torch.Tensor, lipschitz: float | torch.Tensor) -> torch.Tensor:
    """Per-example l2 radius within which the prediction provably stays correct. With a bound L on the
    model's Lipschitz constant (Tsuzuku, Sato and Sugiyama, "Lipschitz-Margin Training", NeurIPS 2018):

        (f_y - max_{j != y} f_j) / (sqrt(2) L);

    with the pairwise bounds K of ``pairwise_lipschitz`` (computed in float64):

        min_{j != y} (f_y - f_j) / K[y, j]    (a pair with K[y, j] = 0 never changes: +-inf by its sign).

    <= 0 for misclassified examples (negative unless the top logits tie; a tie gives 0 or -inf).

    Args:
        logits: f, (n, k).
        y: class indices, (n,).
        lipschitz: L, an upper bound on the model's l2 Lipschitz constant, > 0; or K, (k, k).

    Returns:
        The radii, (n,): in the logits' dtype for L, float64 for K.
    """
    if not isinstance(lipschitz, torch.Tensor):
        return margin(logits, y) / (math.sqrt(2.0) * lipschitz)
    gaps = logits.double().gather(1, y[:, None]) - logits.double()  # (n, k): f_y - f_j
    constants = lipschitz.to(gaps.device)[y]  # (n, k): K[y, j]
    never = torch.where(gaps > 0, math.inf, -math.inf)
    radii = torch.where(constants > 0, gaps / constants.clamp_min(torch.finfo(torch.float64).tiny), never)
    return radii.scatter(1, y[:, None], math.inf).amin(1)


def certified_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, lipschitz: float | torch.Tensor | None = None
) -> float:
    """Certified l2 robust accuracy: the fraction of examples whose ``certified_radius`` exceeds eps,

        f_y(x) - max_{j != y} f_j(x) > sqrt(2) L eps    or    f_y(x) - f_j(x) > K[y, j] eps for all j != y,

    which no perturbation of l2 norm <= eps can misclassify. The model runs once on all of x, in eval mode
    and without gradients, and is left as it was found.

    Args:
        model: maps x to logits (n, k).
        x: the inputs, (n, *shape).
        y: their class indices, (n,).
        eps: the l2 radius, >= 0.
        lipschitz: L, an upper bound on the model's l2 Lipschitz constant, or K, the pairwise bounds;
            None (default): ``pairwise_lipschitz(model, x.shape[1:])``, the tighter.

    Returns:
        The certified accuracy, a float in [0, 1] (at eps = 0: the accuracy, ties counted as errors).

    Raises:
        TypeError: when ``lipschitz`` is None and a layer has no Lipschitz rule.

    Example:
        >>> K = pairwise_lipschitz(model, (1, 28, 28))
        >>> certified_accuracy(model, x, y, eps=0.1, lipschitz=K)  # a float in [0, 1]
    """
    who = "certified_accuracy"
    model = uncompiled(model)
    check_nonnegative("eps", eps)
    check_batch(who, x, y)
    if lipschitz is not None and not isinstance(lipschitz, torch.Tensor):
        check_positive("lipschitz", lipschitz)
    bound = pairwise_lipschitz(model, x.shape[1:]) if lipschitz is None else lipschitz
    with preserved_state(model, mode=False), torch.no_grad():
        logits = check_logits(model(x), x.shape[0])
    k = logits.shape[1]
    check_labels(who, y, x.shape[0], k)
    if isinstance(bound, torch.Tensor):
        if tuple(bound.shape) != (k, k):
            raise ValueError(
                f"{who}: lipschitz K must be the (k, k) = ({k}, {k}) pairwise bounds of the model's {k} classes, "
                f"got shape {tuple(bound.shape)}"
            )
        if not bool(torch.isfinite(bound).all() and (bound >= 0).all()):
            raise ValueError(f"{who}: lipschitz K must be finite and >= 0 everywhere (pairwise_lipschitz gives it)")
    return float((certified_radius(logits, y, bound) > eps).float().mean())
