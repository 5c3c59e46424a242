"""Lipschitz-margin training (Tsuzuku, Sato and Sugiyama, NeurIPS 2018).

A prediction is certified at radius eps when its margin exceeds sqrt(2) L eps, L the network's Lipschitz
constant. Training on logits whose non-target entries are raised by sqrt(2) L eps_train teaches the network
to keep that margin, while the gradient through L keeps L itself small:

    loss = CE(f(x) + sqrt(2) L eps_train (1 - onehot(y)), y).

L is the product bound of ``lipschitz.compose_bound`` with every Conv2d / Linear norm from persistent power
iteration (``spectral.OperatorNorms``): cheap, differentiable, and close to the guaranteed bound once the
power iteration has converged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import lipschitz
from .arguments import check_int, check_positive, describe
from .spectral import OperatorNorms, spectral_layers


class LipschitzMargin(nn.Module):
    """Raises the non-target logits by sqrt(2) L eps (see the module docstring).

    Args (keyword-only):
        eps: eps_train, the radius to keep a margin for, > 0.
        input_shape: the shape of one input of the model, e.g. (1, 28, 28).
        steps: power-iteration steps per call (default 1).

    Shape:
        logits (n, k), y (n,); returns the adjusted logits (n, k), with a graph through L.
    """

    def __init__(self, *, eps: float, input_shape: Sequence[int], steps: int = 1) -> None:
        super().__init__()
        self.eps = check_positive("eps", eps)
        self.input_shape = tuple(input_shape)
        self.steps = check_int("steps", steps)
        self.operators = OperatorNorms()

    def lipschitz(self, model: nn.Module) -> torch.Tensor:
        """The differentiable estimate of L (a 0-dim tensor)."""
        shapes = lipschitz.input_shapes(model, self.input_shape)
        layers = dict(spectral_layers(model))
        norms: dict[nn.Module, torch.Tensor] = {
            layers[name]: sigma for name, sigma in self.operators.estimates(model, shapes, self.steps).items()
        }
        return torch.as_tensor(lipschitz.compose_bound(model, shapes, lambda layer, shape: norms[layer]))

    def forward(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift = math.sqrt(2.0) * self.eps * self.lipschitz(model)
        return logits + shift * (1 - F.one_hot(y, logits.shape[1]).to(logits.dtype))

    def __repr__(self) -> str:
        return describe(self)
