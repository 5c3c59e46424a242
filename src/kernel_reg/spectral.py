"""The upper bound of the RKHS norm: spectral norms of the layers (Bietti, Mialon, Chen and Mairal, ICML 2019).

W_mat denotes a Conv/Linear weight reshaped to (out, -1); BatchNorm weights and biases are never
touched. Contents:

- ``project_``: clip the singular values of every W_mat at tau (constraint), with ``tau_schedule`` and
  ``Projection`` (the constraint as training applies it);
- ``SpectralNormPenalty``: lmbda * sum_layers sigma_max(W_mat)^2, by power iteration or exactly.

The norms of layers as operators on their inputs, guaranteed Lipschitz bounds and certificates are in
``lipschitz``.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import check_choice, check_int, check_positive, describe
from .penalties import Penalty

# the layers whose W_mat the spectral constraint and penalty act on
SPECTRAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Layer = Union[nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d]


def spectral_layers(model: nn.Module) -> list[tuple[str, Layer]]:
    """The (name, module) pairs whose weights the spectral constraint and penalty act on.

    Args:
        model: any module.

    Returns:
        Its Linear and Conv1d/2d/3d submodules with their names, in ``named_modules`` order (the model
        itself included when it is such a layer).
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SPECTRAL_LAYERS)]


def weight_matrix(layer: Layer) -> torch.Tensor:
    """W_mat: the weight reshaped to (out, -1), a view with its graph.

    sigma_max(W_mat) is the quantity the constraint and penalty control; for a convolution it is not the
    layer's operator norm (see ``operator_norm`` and ``conv_operator_norm_upper_bound``).

    Shape:
        Output: (out, in) for Linear, (out, in / groups * prod(kernel_size)) for a convolution.
    """
    return layer.weight.reshape(layer.weight.shape[0], -1)


def _gram(mat: torch.Tensor) -> torch.Tensor:
    """W W^T or W^T W, whichever is smaller: its eigenvalues are the squared singular values of W."""
    return mat @ mat.T if mat.shape[0] <= mat.shape[1] else mat.T @ mat


def clip_singular_values(mat: torch.Tensor, tau: float) -> torch.Tensor:
    """The Frobenius-nearest matrix to ``mat`` with all singular values <= tau: U min(S, tau) V^T.

    Computed from the eigendecomposition of the smaller Gram matrix, as the correction
    W - sum_{s_i > tau} (1 - tau / s_i) u_i u_i^T W (or its transpose), so that only the clipped
    directions are touched and smaller singular values stay exactly as they were. Works in float32 for
    lower-precision inputs.

    Args:
        mat: the matrix W, (p, q).
        tau: the largest singular value allowed (not checked here; ``project_`` checks tau > 0).

    Returns:
        ``mat`` itself (the same object) when no singular value exceeds tau, else a new (p, q) matrix in
        ``mat``'s dtype.
    """
    work = mat if mat.dtype in (torch.float32, torch.float64) else mat.float()
    eigvals, eigvecs = torch.linalg.eigh(_gram(work))
    sigma = eigvals.clamp_min(0).sqrt()
    over = sigma > tau
    if not bool(over.any()):
        return mat
    basis = eigvecs[:, over]  # (min(out, in), r)
    shrink = 1.0 - tau / sigma[over]  # (r,)
    if work.shape[0] <= work.shape[1]:
        clipped = work - basis @ (shrink[:, None] * (basis.T @ work))
    else:
        clipped = work - ((work @ basis) * shrink) @ basis.T
    return clipped.to(mat.dtype)


@torch.no_grad()
def project_(model: nn.Module, tau: float) -> None:
    """The spectral constraint (Bietti, Mialon, Chen and Mairal, ICML 2019): project every Conv/Linear weight in
    place onto {sigma_max(W_mat) <= tau}, W_mat <- U min(S, tau) V^T (``clip_singular_values``).

    Call after ``optimizer.step()``; runs without a graph. Layers already inside the set are not written.

    Args:
        model: the model whose ``spectral_layers`` are projected.
        tau: the radius, a finite number > 0.

    Example:
        >>> optimizer.step()
        >>> project_(model, tau_schedule(tau=1.5, kappa=2.0, epoch=epoch))
    """
    tau = check_positive("tau", tau)
    for _, layer in spectral_layers(model):
        mat = weight_matrix(layer)
        clipped = clip_singular_values(mat, tau)
        if clipped is not mat:
            layer.weight.copy_(clipped.view_as(layer.weight))


def tau_schedule(tau: float, kappa: float, epoch: float) -> float:
    """The decaying constraint radius of the original: tau * (1 + 4 exp(-epoch / kappa)).

    5 tau at epoch 0, decreasing to tau.

    Args:
        tau: the final radius, > 0.
        kappa: the decay time in epochs, > 0.
        epoch: the (possibly fractional) epoch.

    Returns:
        The radius, a float.
    """
    check_positive("tau", tau)
    check_positive("kappa", kappa)
    return tau * (1.0 + 4.0 * math.exp(-epoch / kappa))


class Projection:
    """The spectral constraint as training uses it: after each step at ``epoch``, project every layer
    onto {sigma_max(W_mat) <= tau_schedule(tau, kappa, epoch)} (see ``project_``).

    Args (keyword-only):
        tau: the final radius, > 0 (default 0.5).
        kappa: the decay time of the radius in epochs, > 0 (default 2.0).
    """

    def __init__(self, *, tau: float = 0.5, kappa: float = 2.0) -> None:
        self.tau = check_positive("tau", tau)
        self.kappa = check_positive("kappa", kappa)

    def radius(self, epoch: float) -> float:
        """tau * (1 + 4 exp(-epoch / kappa)), the radius at ``epoch``."""
        return tau_schedule(self.tau, self.kappa, epoch)

    def __repr__(self) -> str:
        return describe(self)

    def __call__(self, model: nn.Module, epoch: float) -> float:
        """Project ``model`` in place; returns the radius used."""
        radius = self.radius(epoch)
        project_(model, radius)
        return radius


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

    def __init__(self, *, lmbda: float = 0.01, method: str = "power", steps: int = 2) -> None:
        nn.Module.__init__(self)
        Penalty.__init__(self, lmbda=lmbda)
        self.method = check_choice("method", method, ("power", "svd"))
        self.steps = check_int("steps", steps)

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

    def squared_sigmas(self, model: nn.Module) -> list[torch.Tensor]:
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
        if self.method == "svd":
            return [torch.linalg.eigvalsh(_gram(weight_matrix(m)))[-1].clamp_min(0) for _, m in layers]
        return [self._power_sigma(name, weight_matrix(m)).pow(2) for name, m in layers]

    def sigmas(self, model: nn.Module) -> list[torch.Tensor]:
        """sigma_max(W_mat) of each layer, 0-dim tensors (for reading; the penalty uses ``squared_sigmas``)."""
        return [s.sqrt() for s in self.squared_sigmas(model)]

    def unweighted(self, model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """sum_layers sigma_max(W_mat)^2."""
        return torch.stack(self.squared_sigmas(model)).sum()

    def __call__(self, model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """lmbda * sum_layers sigma_max(W_mat)^2, with its graph also under ``torch.no_grad()``."""
        with torch.enable_grad():
            return self.lmbda * self.unweighted(model, x, y)

    def __repr__(self) -> str:
        return describe(self)
