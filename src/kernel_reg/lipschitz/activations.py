"""Activations that keep networks Lipschitz-constrained without losing capacity."""

from __future__ import annotations

import torch
from torch import nn


class MaxMin(nn.Module):
    """The MaxMin activation (GroupSort with groups of two; Anil, Lucas and Grosse, ICML 2019): channels in
    pairs (a, b) become (max(a, b), min(a, b)). A permutation of its input at every point, so it keeps the
    l2 norm of differences at most as large (1-Lipschitz) and, unlike ReLU, keeps the norm of the gradient:
    constrained networks keep their capacity.

    Shape:
        x: (n, C, *spatial) with C even; output: the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"MaxMin pairs channels: it needs an even number of them, got {x.shape[1]}")
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
