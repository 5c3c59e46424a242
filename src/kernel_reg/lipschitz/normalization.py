"""Layers held at operator norm 1 inside the forward pass: every weight divided by its operator norm,
estimated by persistent power iteration (its gradient stays tangent to the constraint), or every circular
convolution made orthogonal (``orthogonalize_``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..arguments import (
    check_int,
)
from ..spectral.layers import spectral_layers
from ..spectral.power import _Operator, _power_steps, _unit
from .network import input_shapes
from .orthogonal import CayleyConv2d


class OperatorNormalization(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``) of a Linear / Conv2d weight by its operator norm on
    inputs of one shape, spectral normalization (Miyato, Kataoka, Koyama and Yoshida, ICLR 2018) of the
    operator rather than of the reshaped kernel:

        W_eff = W / ||A_W v||_2,

    A_W the layer's linear map on its inputs and v a unit vector (buffer) that persistent power iteration
    on A_W^T A_W keeps near the top right singular vector, so sigma_max(A_{W_eff}) = sigma_max(A_W) / ||A_W v||
    >= 1, within the power iteration's lag of 1. The forward pass only reads v: every read of the weight
    within a training step sees the same W_eff, and ``power_step_`` (``renormalize_``, after each optimizer
    step) moves v. Guarantees come from bounding W_eff itself (``lipschitz.lipschitz_upper_bound``).

    Args:
        layer: the Linear or Conv2d layer whose weight it parametrizes.
        input_shape: the shape of one input of that layer, e.g. (32, 28, 28).
        steps: power-iteration steps per ``power_step_`` (>= 1).
    """

    v: torch.Tensor

    def __init__(self, layer: nn.Module, input_shape: Sequence[int], steps: int = 1) -> None:
        super().__init__()
        self.operator = _Operator.of(layer)
        self.steps = check_int("steps", steps)
        weight = cast(torch.Tensor, layer.weight)
        self.register_buffer("v", _unit(torch.randn(1, *input_shape, device=weight.device, dtype=weight.dtype)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = weight / self.operator(weight, self.v).flatten().norm()
        return out

    def power_step_(self, weight: torch.Tensor, steps: int | None = None) -> None:
        """v <- A^T A v / ||A^T A v|| (``steps`` times, default the parametrization's), A = A_weight."""
        count = self.steps if steps is None else check_int("steps", steps)
        self.v.copy_(_power_steps(lambda u: self.operator(weight, u), self.v, count))


def _normalizations(model: nn.Module) -> list[tuple[OperatorNormalization, torch.Tensor]]:
    """(parametrization, raw weight) of every weight of ``model`` that ``normalize_`` parametrized."""
    found = []
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            chain = cast(parametrize.ParametrizationList, module.parametrizations["weight"])  # type: ignore[index]
            found += [(p, chain.original) for p in chain if isinstance(p, OperatorNormalization)]
    return found


def _check_fresh(model: nn.Module, caller: str) -> None:
    """ValueError, in one line, when ``orthogonalize_`` or ``normalize_`` has already been applied to ``model``."""
    if any(isinstance(m, CayleyConv2d) for m in model.modules()):
        raise ValueError(f"{caller}: the model is already orthogonalized by orthogonalize_ (its convolutions are "
                         "CayleyConv2d); apply orthogonalize_ once, to a fresh model")  # fmt: skip
    if _normalizations(model):
        raise ValueError(f"{caller}: the model is already normalized by normalize_ (its weights are already "
                         "parametrized); apply one of them once, to a fresh model")  # fmt: skip


def normalize_(model: nn.Module, input_shape: Sequence[int], steps: int = 1, warmup: int = 100) -> nn.Module:
    """Parametrize every Linear / Conv2d weight of ``model`` in place by ``OperatorNormalization``, so that
    each layer's operator norm on its inputs (those of a model input of ``input_shape``) is held near 1 for
    the whole of training; the power iteration starts with ``warmup`` steps. Returns the model.

    Call ``renormalize_(model)`` after each optimizer step (``training.step`` does). The state dict holds
    each raw weight as ``<layer>.parametrizations.weight.original`` beside its vector ``...weight.0.v``.

    Example:
        >>> model = normalize_(models.lipnet(), (1, 28, 28))
        >>> lipschitz.lipschitz_upper_bound(model, (1, 28, 28))  # about 1 with MaxMin activations
    """
    _check_fresh(model, "normalize_")
    return _normalize(model, input_shape, steps, warmup)


def _normalize(model: nn.Module, input_shape: Sequence[int], steps: int, warmup: int) -> nn.Module:
    """``normalize_`` without its check that the model is fresh (``orthogonalize_`` normalizes what it leaves)."""
    check_int("warmup", warmup, minimum=0)
    shapes = input_shapes(model, input_shape)
    for name, layer in spectral_layers(model):
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"normalize_: layer {name!r} ({type(layer).__name__}) is already parametrized; "
                             "normalize_ a model once")  # fmt: skip
        normalization = OperatorNormalization(layer, shapes[layer], steps)
        if warmup:
            normalization.power_step_(layer.weight.detach(), warmup)
        parametrize.register_parametrization(layer, "weight", normalization)
    return model


def renormalize_(model: nn.Module, steps: int | None = None) -> None:
    """Power iteration for every ``OperatorNormalization`` of ``model`` (nothing without any), each its own
    number of steps or ``steps``: v follows the weights after an optimizer step."""
    for normalization, weight in _normalizations(model):
        normalization.power_step_(weight.detach(), steps)


def orthogonalize_(model: nn.Module, input_shape: Sequence[int], warmup: int = 100) -> nn.Module:
    """Make every layer of ``model`` orthogonal or normalized, in place, for inputs of ``input_shape``:
    each Conv2d becomes an ``orthogonal.CayleyConv2d`` (Trockman and Kolter, ICLR 2021) with the same
    channels, kernel size and bias on the spatial size it receives (a freshly drawn kernel: call before
    training), and the remaining Linear layers are held at operator norm 1 by ``normalize_`` (``warmup``
    power-iteration steps). Returns the model.

    Every singular value of an orthogonal convolution is 1, where ``normalize_`` holds only the largest at 1:
    with MaxMin activations the convolutions keep the norm of every input and every gradient.

    Raises:
        ValueError: for a Conv2d that is not a circular convolution (stride 1, dilation 1, groups 1, an odd
            square kernel k, padding k // 2 with ``padding_mode="circular"``), as ``models.lipnet``'s are.
    """
    if isinstance(model, nn.Conv2d):
        raise ValueError("orthogonalize_ replaces layers inside a model: wrap the Conv2d in nn.Sequential")
    _check_fresh(model, "orthogonalize_")
    shapes = input_shapes(model, input_shape)
    convolutions = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, conv in convolutions:
        k = conv.kernel_size[0]
        circular = (
            conv.padding_mode == "circular" and conv.kernel_size == (k, k) and k % 2 == 1
            and conv.padding == (k // 2, k // 2) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1
        )  # fmt: skip
        if not circular:
            raise ValueError(
                f"orthogonalize_ replaces circular convolutions only (stride 1, dilation 1, groups 1, odd square "
                f"kernel k, padding k // 2, padding_mode 'circular'); layer {name!r} is {conv}"
            )
        cayley = CayleyConv2d(conv.in_channels, conv.out_channels, k, shapes[conv][-2:], bias=conv.bias is not None)
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, cayley.to(conv.weight.device, conv.weight.dtype))
    return _normalize(model, input_shape, 1, warmup)
