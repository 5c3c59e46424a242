"""Operator norms of layers by persistent power iteration: the estimate kept between calls sharpens as
training goes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..lipschitz.layer_bounds import LINEAR_LAYERS
from ..lipschitz.orthogonal import CayleyConv2d


def operator_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of ``model``'s layers in ``LINEAR_LAYERS`` (Linear, Conv2d,
    CayleyConv2d), whose operator norms compose the Lipschitz bound, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LINEAR_LAYERS)]


class OperatorNorms(nn.Module):
    """Persistent power iteration on the operator of every layer of ``operator_layers`` (its linear part on
    inputs of the layer's input shape), one unit vector per layer kept between calls as a buffer, so that one or
    two steps per training step track the top singular value as the weights move.

    ``estimates(model, shapes, steps)`` returns sigma_l = ||A_l v_l||_2 per layer, v_l the unit vector after
    ``steps`` steps: a lower bound on the operator norm that converges to it, differentiable with respect to
    the weights (v_l held constant); 1 for an orthogonal ``CayleyConv2d``. The vectors are buffers
    (``state_dict`` carries them).
    """

    def estimates(
        self, model: nn.Module, shapes: dict[nn.Module, tuple[int, ...]], steps: int
    ) -> dict[str, torch.Tensor]:
        sigmas = {}
        for name, layer in operator_layers(model):
            if isinstance(layer, CayleyConv2d):  # orthogonal by construction: nothing to estimate
                sigmas[name] = torch.ones((), device=layer.weight.device, dtype=layer.weight.dtype)
                continue
            shape = shapes.get(layer, ())
            apply = _linear_map(layer)
            key = "v:" + name.replace(".", "/")
            v = self._buffers.get(key)
            weight = cast(torch.Tensor, layer.weight)
            if v is None or tuple(v.shape) != (1, *shape) or v.device != weight.device or v.dtype != weight.dtype:
                v = _unit(torch.randn(1, *shape, device=weight.device, dtype=weight.dtype))
            v = _power_steps(apply, v, steps)
            self.register_buffer(key, v)
            sigmas[name] = apply(v).flatten().norm()
        return sigmas

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for key, value in state_dict.items():  # the vectors are made on first use: make them for loading too
            if key.startswith(prefix) and key[len(prefix) :] not in self._buffers:
                self.register_buffer(key[len(prefix) :], torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _unit(v: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = v / v.flatten().norm().clamp_min(torch.finfo(v.dtype).tiny)
    return out


@torch.no_grad()
def _power_steps(apply: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` steps of power iteration on A^T A from v, A = ``apply`` (linear): v <- A^T A v / ||A^T A v||."""
    for _ in range(steps):
        v = _unit(torch.func.vjp(apply, v)[1](apply(v))[0])
    return v


@dataclass(frozen=True)
class _Operator:
    """How a Linear or Conv2d layer applies a weight (without its bias): (W, v) -> A_W v, with the layer's
    stride, padding (its mode too: circular, reflect, ...), dilation and groups."""

    conv: bool
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    mode_padding: tuple[int, ...] | None = None  # F.pad's amounts when padding_mode is not "zeros"
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, layer: nn.Module) -> _Operator:
        if isinstance(layer, nn.Linear):
            return cls(conv=False)
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"operator norms are defined for Linear and Conv2d layers, got {type(layer).__name__}")
        padded = layer.padding_mode != "zeros"
        return cls(
            conv=True, stride=layer.stride, padding=0 if padded else layer.padding, dilation=layer.dilation,
            groups=layer.groups, padding_mode=layer.padding_mode,
            mode_padding=tuple(layer._reversed_padding_repeated_twice) if padded else None,
        )  # fmt: skip

    def __call__(self, weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            return F.linear(v, weight)
        if self.mode_padding is not None:
            v = F.pad(v, self.mode_padding, mode=self.padding_mode)
        return F.conv2d(v, weight, None, self.stride, self.padding, self.dilation, self.groups)


def _linear_map(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> the layer's linear part applied to v (no bias)."""
    operator = _Operator.of(layer)
    return lambda v: operator(cast(torch.Tensor, layer.weight), v)
