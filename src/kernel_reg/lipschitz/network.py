"""The Lipschitz constant of a whole network: the guaranteed product bound over its layers, a differentiable
estimate of it, and a lower bound from the largest Jacobian norm found."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..guard import preserved_state, uncompiled
from ..progress import progress
from ..tensors import randn
from .layer_bounds import LINEAR_LAYERS, _layer_bound

Bound = float | torch.Tensor  # a bound, or a differentiable estimate


@runtime_checkable
class LipschitzBounded(Protocol):
    """A module that states its own Lipschitz rule for ``lipschitz_upper_bound``.

    ``lipschitz_upper_bound(child_bound)`` returns a guaranteed upper bound on the module's l2 -> l2
    Lipschitz constant, given ``child_bound(submodule)``, the bound of any of its submodules on the inputs
    that submodule receives. A residual block x -> x + g(x) returns 1 + child_bound(g); a block
    x -> relu(x + g(x)) the same (ReLU is 1-Lipschitz). See ``models.Normalize`` and ``models.BasicBlock``.
    """

    def lipschitz_upper_bound(self, child_bound: Callable[[nn.Module], Any]) -> Any:
        """The module's bound, given ``child_bound(submodule) -> float`` for its submodules."""
        ...


def _reference(model: nn.Module) -> torch.Tensor:
    """A tensor with the model's device and dtype (a float32 CPU one for a model without any)."""
    return next(itertools.chain(model.parameters(), model.buffers()), torch.zeros(()))


def input_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[nn.Module, tuple[int, ...]]:
    """The shape (without batch) of the input each submodule receives on one example of ``input_shape``;
    ValueError naming ``input_shape`` when it is not a shape the model takes."""
    model = uncompiled(model)
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else input_shape
    hint = "give the shape of one input, without the batch dimension, e.g. (1, 28, 28)"
    if not isinstance(shape, tuple) or not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(f"input_shape {shape} is not a shape of positive integers; {hint}")
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        shapes.setdefault(module, tuple(args[0].shape[1:]))

    layers = [m for name, m in model.named_modules() if "parametrizations" not in name.split(".")]  # not W's maps
    handles = [m.register_forward_pre_hook(record) for m in layers]
    param = _reference(model)
    try:
        with preserved_state(model, mode=False), torch.no_grad():
            model(torch.zeros(1, *shape, device=param.device, dtype=param.dtype))
    except (RuntimeError, ValueError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"input_shape {shape} does not fit the model, whose forward pass on it fails ({first}); "
                         f"{hint}") from None  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def lipschitz_upper_bound(model: nn.Module, input_shape: Sequence[int], iters: int = 12) -> float:
    """Guaranteed upper bound L on the l2 -> l2 Lipschitz constant of ``model`` (in eval mode) on inputs
    of ``input_shape`` (C, H, W): ||f(x) - f(x')||_2 <= L ||x - x'||_2.

    The product over a ``nn.Sequential`` of per-layer bounds:

    - Conv2d and Linear: Gram iteration (``conv_operator_norm_upper_bound``, ``gram_iteration_bound``;
      Delattre, Barthelemy, Araujo and Allauzen, ICML 2023); ``orthogonal.CayleyConv2d``: Gram iteration on
      its Fourier blocks (1 up to rounding and the iteration's slack);
    - ReLU, Tanh, Identity, Flatten, Dropout: 1; LeakyReLU: max(1, |slope|); ELU: max(1, |alpha|); Sigmoid: 1/4;
    - MaxPool2d (dilation 1): sqrt(c), c = ceil(k_h / s_h) ceil(k_w / s_w) the most windows an input lies
      in (1 when non-overlapping); AvgPool2d (``count_include_pad`` or no padding): sqrt(c / (k_h k_w))
      (1/k for k x k with stride k); AdaptiveAvgPool2d(1): 1 / sqrt(H W);
    - BatchNorm (eval mode, running statistics): max |gamma| / sqrt(running_var + eps).

    A module that implements ``LipschitzBounded`` (residual blocks: the sum rule) states its own rule. One
    forward pass on a zero input records each layer's input shape; a model without parameters is bounded
    all the same.

    Args:
        model: a ``nn.Sequential`` of the layers above, a ``LipschitzBounded`` module, or one such layer.
        input_shape: the shape of one input, without the batch dimension, e.g. (1, 28, 28).
        iters: Gram-iteration steps per Linear / Conv2d layer, >= 0 (default 12).

    Returns:
        L, a float.

    Raises:
        TypeError: for a layer without a rule (e.g. Conv1d, a non-sequential container).

    Example:
        >>> model = models.vgg5_stable()
        >>> L = lipschitz_upper_bound(model, (1, 28, 28))  # >= the true constant, not an estimate
    """
    model = uncompiled(model)
    shapes = input_shapes(model, input_shape)
    norms = _linear_norms(model, shapes, iters)
    return float(compose_bound(model, shapes, lambda layer, _: norms[layer]))


def _linear_norms(model: nn.Module, shapes: dict[nn.Module, tuple[int, ...]], iters: int) -> dict[nn.Module, float]:
    """The Gram-iteration bound of every ``LINEAR_LAYERS`` layer of ``model``, each once, with a progress bar on
    a terminal (a VGG-11 takes over a minute on a CPU)."""
    layers = [m for m in model.modules() if isinstance(m, LINEAR_LAYERS)]
    bars = progress(layers, len(layers), "Lipschitz bound (Gram iteration per layer)")
    return {layer: _layer_bound(layer, shapes.get(layer, ()), iters) for layer in bars}


def compose_bound(
    model: nn.Module, shapes: dict[nn.Module, tuple[int, ...]], linear: Callable[[nn.Module, tuple[int, ...]], Bound]
) -> Bound:
    """The Lipschitz bound of ``model`` by the rules of ``lipschitz_upper_bound``, with the norms of its
    ``LINEAR_LAYERS`` from ``linear(layer, input_shape)``: Gram-iteration bounds give the guaranteed bound,
    power-iteration estimates with their graph a differentiable estimate (Lipschitz-margin training).
    ``shapes``: each submodule's input shape (``input_shapes``)."""
    model = uncompiled(model)

    def bound(module: nn.Module) -> Bound:
        if isinstance(module, LipschitzBounded):
            out: Bound = module.lipschitz_upper_bound(bound)
            return out
        if isinstance(module, nn.Sequential):
            result: Bound = 1.0
            for child in module:
                result = result * bound(child)
            return result
        if isinstance(module, LINEAR_LAYERS):
            return linear(module, shapes.get(module, ()))
        return _layer_bound(module, shapes.get(module, ()), 0)

    return bound(model)


def lipschitz_lower_bound(
    model: nn.Module, x: torch.Tensor, steps: int = 10, generator: torch.Generator | None = None
) -> float:
    """An empirical lower bound on the l2 Lipschitz constant of ``model`` (eval mode): the largest spectral
    norm of its Jacobian at the inputs ``x``, max_i ||J_f(x_i)||_2, each by ``steps`` power-iteration steps
    on J^T J (each step one forward-mode and one reverse-mode product), from random starting directions
    drawn from ``generator`` (default: the global RNG). Since L >= ||J_f(x)||_2 at every x, the ratio of
    this to ``lipschitz_upper_bound`` says how tight the certificate is (1: exact).

    Shape:
        x: (n, *shape), the inputs to probe.
    Returns:
        The largest estimate, a float (0 for an empty batch).
    """
    if x.shape[0] == 0:
        return 0.0
    x = x.detach()
    with preserved_state(model, mode=False), torch.enable_grad():
        v = randn(tuple(x.shape), x, generator)
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        sigma = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for _ in range(steps):
            jv = torch.func.jvp(model, (x,), (v,))[1]  # J v, per example (examples do not interact)
            x_in = x.clone().requires_grad_(True)
            out = model(x_in)
            (jtjv,) = torch.autograd.grad(out, x_in, grad_outputs=jv)  # J^T J v
            sigma = jv.flatten(1).norm(dim=1)  # ||J v|| with ||v|| = 1: a lower bound on ||J||_2
            v = jtjv / jtjv.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return float(sigma.detach().max())
