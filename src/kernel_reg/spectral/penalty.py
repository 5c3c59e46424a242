"""The spectral-norm penalty: lmbda * sum_layers sigma_max(W_mat)^2, by power iteration or exactly."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import (
    check_choice,
    check_int,
    describe,
)
from ..deprecation import old_arguments
from ..lipschitz.network import input_shapes
from ..penalties import Penalty
from .layers import _gram, spectral_layers, weight_matrix
from .power import OperatorNorms
from .projection import NORMS


class SpectralNormPenalty(Penalty, nn.Module):
    """The spectral-norm penalty (Bietti, Mialon, Chen and Mairal, ICML 2019), an upper-bound regularizer:

        lmbda * sum_layers sigma_max(W_mat)^2

    over the model's Conv/Linear layers (``spectral_layers``).

    The power-iteration vectors are buffers of this module (as in spectral normalization, Miyato, Kataoka,
    Koyama and Yoshida, ICLR 2018), so ``state_dict()`` carries them into a checkpoint like any other
    state; a vector whose shape, device or dtype no longer matches its layer is drawn again (global RNG).
    The model is not run: x and y are not used, and the call needs no ``preserved_state``.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.01).
        method: "power" (default): ``steps`` power-iteration steps per call from vectors kept between calls
            (one per layer, so the estimate sharpens as training goes), sigma = u^T W_mat v with u, v held
            constant (an estimate from below); "svd": the exact largest eigenvalue of the smaller Gram
            matrix, sigma^2.
        steps: power-iteration steps per call, >= 1 (default 2; "power" only).
        norm: "reshaped" (default): sigma_max of W_mat; "operator" ("power" only): the norm of the layer as
            an operator on its inputs, by persistent power iteration on the operator (``OperatorNorms``),
            which needs x to know the input shape.

    Shape:
        x, y: not used (may be omitted).

    Returns:
        A scalar tensor, the penalty above, with a graph to the layers' weights.

    Raises:
        ValueError: for a model without Linear or Conv1d/2d/3d layers.

    Example:
        >>> penalty = SpectralNormPenalty(lmbda=0.01, method="power", steps=2)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model)
        >>> sigmas = penalty.sigmas(model)  # sigma_max(W_mat) per layer
    """

    name = "spectral-norm"

    @old_arguments(("lmbda", "method", "iters"), renamed={"iters": "steps"})
    def __init__(self, *, lmbda: float = 0.01, method: str = "power", steps: int = 2, norm: str = "reshaped") -> None:
        nn.Module.__init__(self)
        Penalty.__init__(self, lmbda=lmbda)
        self.method = check_choice("method", method, ("power", "svd"))
        self.steps = check_int("steps", steps)
        self.norm = check_choice("norm", norm, NORMS)
        if norm == "operator" and method != "power":
            raise ValueError("norm='operator' is estimated by power iteration: use method='power'")
        self.operators = OperatorNorms()

    @staticmethod
    def _key(layer_name: str) -> str:
        return "u:" + layer_name.replace(".", "/")  # buffer names cannot hold dots

    def _power_sigma(self, name: str, mat: torch.Tensor) -> torch.Tensor:
        key = self._key(name)
        u = self._buffers.get(key)
        if u is None or u.shape[0] != mat.shape[0] or u.device != mat.device or u.dtype != mat.dtype:
            u = F.normalize(torch.randn(mat.shape[0], device=mat.device, dtype=mat.dtype), dim=0)
        with torch.no_grad():
            for _ in range(self.steps):
                v = F.normalize(mat.T @ u, dim=0)
                u = F.normalize(mat @ v, dim=0)
        self.register_buffer(key, u)
        return u @ mat @ v

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for key, value in state_dict.items():  # the vectors are made on first use: make them for loading too
            if key.startswith(prefix) and key[len(prefix) :] not in self._buffers:
                self.register_buffer(key[len(prefix) :], torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def squared_sigmas(self, model: nn.Module, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """sigma_max(W_mat)^2 of each layer, differentiable with respect to the weights (no square root,
        so zero weights have a finite gradient).

        Returns:
            One 0-dim tensor per layer of ``spectral_layers(model)``, in that order; with "power", each
            call advances the power iteration.

        Raises:
            ValueError: for a model without Linear or Conv1d/2d/3d layers.
        """
        layers = spectral_layers(model)
        if not layers:
            raise ValueError(
                f"{type(model).__name__} has no layer the spectral-norm penalty acts on (Linear, Conv1d/2d/3d)"
            )
        if self.norm == "operator":
            if x is None:
                raise ValueError("the operator-norm penalty needs the inputs x (their shape): penalty(model, x)")
            shapes = input_shapes(model, x.shape[1:])
            return [s.pow(2) for s in self.operators.estimates(model, shapes, self.steps).values()]
        if self.method == "svd":
            return [torch.linalg.eigvalsh(_gram(weight_matrix(m)))[-1].clamp_min(0) for _, m in layers]
        return [self._power_sigma(name, weight_matrix(m)).pow(2) for name, m in layers]

    def sigmas(self, model: nn.Module, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """sigma_max of each layer, 0-dim tensors (for reading; the penalty uses ``squared_sigmas``)."""
        return [s.sqrt() for s in self.squared_sigmas(model, x)]

    def unweighted(self, model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """sum_layers sigma_max(W_mat)^2."""
        return torch.stack(self.squared_sigmas(model, x)).sum()

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """lmbda * sum_layers sigma_max(W_mat)^2, with its graph also under ``torch.no_grad()`` (``logits``
        ignored)."""
        with torch.enable_grad():
            return self.lmbda * self.unweighted(model, x, y)

    def __repr__(self) -> str:
        return describe(self)
