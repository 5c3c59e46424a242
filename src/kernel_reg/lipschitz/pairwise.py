"""Bounds per pair of classes: K[i, j] bounds the Lipschitz constant of f_i - f_j, from the rows of the last
Linear layer and the bound of the layers before it (never above sqrt(2) L)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from ..guard import preserved_state, uncompiled
from .network import Bound, _linear_norms, _reference, compose_bound, input_shapes


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The last layer of ``model`` when it is a ``nn.Sequential`` ending with a Linear one, else None."""
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], nn.Linear):
        return model[-1]
    return None


def pair_constants(weight: torch.Tensor, body: Bound, whole: Bound) -> torch.Tensor:
    """min(sqrt(2) L, ||w_i - w_j||_2 L_body) for every pair of rows of ``weight`` (k, d), with L = ``whole``
    and L_body = ``body``: (k, k), zero on the diagonal; differentiable (no NaN at equal rows)."""
    squared = torch.stack([((weight - w_i) ** 2).sum(1) for w_i in weight])  # ||w_i - w_j||^2, a row at a time
    tiny = torch.finfo(weight.dtype).tiny
    rows = torch.where(squared > 0, squared.clamp_min(tiny).sqrt(), torch.zeros_like(squared))
    return torch.minimum(rows * body, math.sqrt(2.0) * torch.as_tensor(whole, dtype=weight.dtype))


def lipschitz_bounds(model: nn.Module, input_shape: Sequence[int], iters: int = 12) -> tuple[float, torch.Tensor]:
    """``lipschitz_upper_bound`` and ``pairwise_lipschitz`` from one bound per layer: (L, K)."""
    model = uncompiled(model)
    shapes = input_shapes(model, input_shape)
    norms = _linear_norms(model, shapes, iters)  # each layer bounded once for both products

    def linear(layer: nn.Module, _: tuple[int, ...]) -> Bound:
        return norms[layer]

    whole = float(compose_bound(model, shapes, linear))
    head = linear_head(model)
    if head is not None:
        body = float(compose_bound(cast(nn.Sequential, model)[:-1], shapes, linear))
        return whole, pair_constants(head.weight.detach().double(), body, whole)  # a parametrization's own weight
    reference = _reference(model)
    with preserved_state(model, mode=False), torch.no_grad():
        k = model(torch.zeros(1, *input_shape, device=reference.device, dtype=reference.dtype)).shape[1]
    pairwise = torch.full((k, k), math.sqrt(2.0) * whole, dtype=torch.float64, device=reference.device)
    return whole, pairwise.fill_diagonal_(0.0)


def pairwise_lipschitz(model: nn.Module, input_shape: Sequence[int], iters: int = 12) -> torch.Tensor:
    """Guaranteed bounds on the l2 Lipschitz constants of the logit differences, K[i, j] >= Lip(f_i - f_j),
    from the rows of the last layer (Leino, Wang and Fredrikson, "Globally-Robust Neural Networks", ICML
    2021): for a ``nn.Sequential`` ending with a Linear layer W after a body g of bound L_g
    (f = W g + b, so f_i - f_j = (w_i - w_j)^T g + b_i - b_j),

        K[i, j] = min(sqrt(2) L, ||w_i - w_j||_2 L_g),    K[i, i] = 0,

    and K[i, j] = sqrt(2) L for any other model, L = ``lipschitz_upper_bound(model)``. As
    ||w_i - w_j|| <= sqrt(2) ||W||_2, the certificate it gives (``certified_radius``) is never looser than
    margin > sqrt(2) L eps, and tighter wherever the rows of W are not orthonormal. ``lipschitz_bounds``
    gives L with it for the price of one.

    Args:
        model: as for ``lipschitz_upper_bound``.
        input_shape: the shape of one input, without the batch dimension.
        iters: Gram-iteration steps per Linear / Conv2d layer (default 12).

    Returns:
        K, (k, k) float64 on the model's device, k the number of logits.
    """
    return lipschitz_bounds(model, input_shape, iters)[1]
