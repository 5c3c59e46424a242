"""The spectral constraint: clip the singular values of every layer at tau, with the original's decaying
radius (``tau_schedule``) and ``Projection``, the constraint as training applies it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..arguments import (
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    describe,
)
from ..lipschitz.layer_bounds import layer_upper_bound
from ..lipschitz.network import input_shapes
from .layers import _gram, spectral_layers, weight_matrix
from .power import OperatorNorms


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
    out: torch.Tensor = clipped.to(mat.dtype)
    return out


NORMS = ("reshaped", "operator")


@torch.no_grad()
def project_(
    model: nn.Module, tau: float, norm: str = "reshaped", input_shape: Sequence[int] | None = None, iters: int = 12
) -> None:
    """Project every Conv/Linear weight in place onto a set of bounded norm (call after ``optimizer.step()``).

    norm="reshaped" (the original's constraint; Bietti, Mialon, Chen and Mairal, ICML 2019): onto
    {sigma_max(W_mat) <= tau}, W_mat <- U min(S, tau) V^T (``clip_singular_values``). This bounds the
    reshaped kernel, not the convolution as an operator on images.

    norm="operator": every layer's operator norm on inputs of ``input_shape`` (stride, padding, dilation and
    groups as the layer has them) becomes guaranteed <= tau: W <- W tau / B when B > tau, B the layer's
    Gram-iteration upper bound (``lipschitz.conv_operator_norm_upper_bound``, ``iters`` steps; a Linear
    layer's is its sigma_max). Then a network of such layers and 1-Lipschitz activations is tau^depth times
    its fixed layers' constants Lipschitz.

    Runs without a graph; layers already inside the set are not written.

    Args:
        model: the model whose ``spectral_layers`` are projected.
        tau: the radius, a finite number > 0.
        norm: "reshaped" (default) or "operator".
        input_shape: norm="operator": the shape of one input of the model, e.g. (1, 28, 28).
        iters: norm="operator": Gram-iteration steps per layer (more: a tighter bound).

    Example:
        >>> optimizer.step()
        >>> project_(model, tau_schedule(tau=1.5, kappa=2.0, epoch=epoch))
        >>> project_(model, 1.0, norm="operator", input_shape=(1, 28, 28))  # guaranteed 1-Lipschitz layers
    """
    tau = check_positive("tau", tau)
    check_choice("norm", norm, NORMS)
    if norm == "operator":
        shapes = _shapes_for(model, input_shape)
        for _, layer in spectral_layers(model):
            bound = layer_upper_bound(layer, shapes.get(layer, ()), iters)
            if bound > tau:
                layer.weight.mul_(tau / bound)
        return
    for _, layer in spectral_layers(model):
        mat = weight_matrix(layer)
        clipped = clip_singular_values(mat, tau)
        if clipped is not mat:
            layer.weight.copy_(clipped.view_as(layer.weight))


def _shapes_for(model: nn.Module, input_shape: Sequence[int] | None) -> dict[nn.Module, tuple[int, ...]]:
    if input_shape is None:
        raise ValueError("norm='operator' needs input_shape, the shape of one model input, e.g. (1, 28, 28)")
    return input_shapes(model, input_shape)


def tau_schedule(tau: float, kappa: float, epoch: float) -> float:
    """The decaying constraint radius of the original: tau * (1 + 4 exp(-epoch / kappa)).

    5 tau at epoch 0, decreasing to tau; kappa = 0: tau from the start (certified training, where a margin
    is kept for the final radius from the first step).

    Args:
        tau: the final radius, > 0.
        kappa: the decay time in epochs, >= 0.
        epoch: the (possibly fractional) epoch.

    Returns:
        The radius, a float.
    """
    check_positive("tau", tau)
    if check_nonnegative("kappa", kappa) == 0:
        return tau
    return tau * (1.0 + 4.0 * math.exp(-epoch / kappa))


class Projection(nn.Module):
    """The spectral constraint as training uses it: after each step at ``epoch``, every layer is brought
    into the set of radius tau_schedule(tau, kappa, epoch).

    norm="reshaped": ``project_`` on the reshaped kernels, exactly, at every step. norm="operator": at every
    step each layer is divided by its power-iteration estimate of its operator norm when that exceeds the
    radius (``OperatorNorms``, ``steps`` steps: as cheap as the reshaped projection), and at the end of each
    epoch (``finish_epoch``) ``project_(norm="operator")`` makes every norm guaranteed <= the radius, so that
    the weights saved and evaluated are.

    Args (keyword-only):
        tau: the final radius, > 0 (default 0.5).
        kappa: the decay time of the radius in epochs, >= 0 (default 2.0; 0: the radius is tau throughout).
        norm: "reshaped" (default) or "operator".
        input_shape: norm="operator": the shape of one input of the model.
        steps: norm="operator": power-iteration steps per training step (default 1).
    """

    def __init__(
        self,
        *,
        tau: float = 0.5,
        kappa: float = 2.0,
        norm: str = "reshaped",
        input_shape: Sequence[int] | None = None,
        steps: int = 1,
    ) -> None:
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.kappa = check_nonnegative("kappa", kappa)
        self.norm = check_choice("norm", norm, NORMS)
        if norm == "operator" and input_shape is None:
            raise ValueError("norm='operator' needs input_shape, the shape of one input of the model")
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.steps = check_int("steps", steps)
        self.operators = OperatorNorms()

    def radius(self, epoch: float) -> float:
        """tau * (1 + 4 exp(-epoch / kappa)), the radius at ``epoch``."""
        return tau_schedule(self.tau, self.kappa, epoch)

    def __repr__(self) -> str:
        return describe(self)

    @torch.no_grad()
    def __call__(self, model: nn.Module, epoch: float) -> float:
        """Bring ``model`` into the set in place; returns the radius used."""
        radius = self.radius(epoch)
        if self.norm == "reshaped":
            project_(model, radius)
            return radius
        shapes = _shapes_for(model, self.input_shape)
        layers = dict(spectral_layers(model))
        for name, sigma in self.operators.estimates(model, shapes, self.steps).items():
            if name in layers and sigma > radius:  # an orthogonal layer has no scale to project
                layers[name].weight.mul_(radius / sigma)
        return radius

    @torch.no_grad()
    def finish_epoch(self, model: nn.Module, epoch: float) -> None:
        """norm="operator": make every layer's norm guaranteed <= the radius (nothing for "reshaped", whose
        every step is exact)."""
        if self.norm == "operator":
            project_(model, self.radius(epoch), norm="operator", input_shape=self.input_shape)
