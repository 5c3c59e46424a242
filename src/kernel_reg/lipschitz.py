"""Lipschitz constants of networks and the certificates they give.

- ``operator_norm``: the norm of a layer as it acts on its input (padding, stride), by power iteration
  (an estimate from below);
- ``gram_iteration_bound`` / ``conv_operator_norm_upper_bound`` / ``lipschitz_upper_bound``: guaranteed
  upper bounds (Gram iteration, on the Fourier blocks of a circular embedding for convolutions; Delattre,
  Barthélemy, Araujo and Allauzen, ICML 2023), ``pairwise_lipschitz`` for each difference of two logits
  (the last layer's rows), and from them ``certified_radius`` and ``certified_accuracy`` (margin > sqrt(2)
  L eps, Tsuzuku, Sato and Sugiyama, NeurIPS 2018; or f_y - f_j > K[y, j] eps for every j).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import check_batch, check_int, check_labels, check_logits, check_nonnegative, check_positive
from .guard import preserved_state, uncompiled
from .models import MaxMin
from .orthogonal import CayleyConv2d
from .progress import progress
from .tensors import margin

# the linear layers whose operator norms the bounds compose (power iteration estimates them all)
LINEAR_LAYERS = (nn.Linear, nn.Conv2d, CayleyConv2d)


def _linear_part(layer: nn.Module, input_shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> layer(v) - layer(0): the linear part of an affine layer, on one input of ``input_shape``."""
    param = next(layer.parameters())
    zeros = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    offset = layer(zeros).detach()
    return lambda v: layer(v) - offset


def operator_norm(layer: nn.Module, input_shape: Sequence[int], iters: int = 500, tol: float = 1e-7) -> float:
    """Largest singular value sigma_max(A) of an affine layer's linear part A v = layer(v) - layer(0) acting on
    inputs of ``input_shape`` (e.g. (C, H, W) for a convolution, with its padding and stride), by power
    iteration on A^T A (global RNG for the start).

    An estimate from below that converges to the exact value; not a certificate (see
    ``conv_operator_norm_upper_bound`` and ``lipschitz_upper_bound``).

    Args:
        layer: a module with at least one parameter, affine in its input (Linear, Conv, ...).
        input_shape: the shape of one input, without the batch dimension.
        iters: the largest number of iterations, >= 1 (default 500).
        tol: stop once the estimate changes by at most ``tol`` times itself (default 1e-7).

    Returns:
        ||A v||_2 for the last unit vector v, a float.
    """
    check_int("iters", iters)
    apply = _linear_part(layer, input_shape)
    param = next(layer.parameters())
    v = F.normalize(torch.randn(1, *input_shape, device=param.device, dtype=param.dtype).flatten(), dim=0)
    sigma = 0.0
    with torch.enable_grad():
        for _ in range(iters):
            v_in = v.view(1, *input_shape).requires_grad_(True)
            out = apply(v_in)
            new_sigma = float(out.detach().norm())
            normal = torch.autograd.grad(out, v_in, grad_outputs=out)[0].flatten()  # A^T A v
            v = F.normalize(normal, dim=0)
            if abs(new_sigma - sigma) <= tol * new_sigma:
                return new_sigma
            sigma = new_sigma
    return sigma


def gram_iteration_bound(matrices: torch.Tensor, iters: int = 12) -> torch.Tensor:
    """Guaranteed upper bounds on sigma_max of each matrix of a batch, by Gram iteration (Delattre,
    Barthelemy, Araujo and Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional Layers by Gram
    Iteration", ICML 2023).

    With G_0 = W (or W^H when p < q) and G_{t+1} = G_t^H G_t, ||G_t||_2 = sigma_max^(2^t) <= ||G_t||_F, so

        sigma_max <= ||G_iters||_F^(1 / 2^iters),

    a bound that tightens to within a factor rank^(1 / 2^(iters+1)). Computed in double precision with a
    rescaling at every step (tracked in logs), which keeps rounding errors orders of magnitude below the
    bound's own slack.

    Args:
        matrices: real or complex matrices, (..., p, q).
        iters: the number of Gram steps t, >= 0 (default 12; 0 gives the Frobenius norm).

    Shape:
        matrices: (..., p, q); output: (...), float64.

    Returns:
        The bounds, on the matrices' device.
    """
    check_int("iters", iters, minimum=0)
    g = matrices.to(torch.complex128 if matrices.is_complex() else torch.float64)
    if g.shape[-2] < g.shape[-1]:
        g = g.mH
    log_scale = torch.zeros(g.shape[:-2], dtype=torch.float64, device=g.device)
    tiny = torch.finfo(torch.float64).tiny
    for _ in range(iters):
        norm = torch.linalg.matrix_norm(g).clamp_min(tiny)
        g = g / norm[..., None, None].to(g.dtype)
        log_scale = 2.0 * (log_scale + norm.log())
        g = g.mH @ g
    log_sigma = (log_scale + torch.linalg.matrix_norm(g).log()) / 2.0**iters
    return log_sigma.exp()


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Total zero padding added along height and width."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        (kh, kw), (dh, dw) = _pair(conv.kernel_size), _pair(conv.dilation)
        return (kh - 1) * dh, (kw - 1) * dw
    ph, pw = _pair(conv.padding)
    return 2 * ph, 2 * pw


def conv_operator_norm_upper_bound(conv: nn.Conv2d, input_size: Sequence[int], iters: int = 12) -> float:
    """Guaranteed upper bound on the l2 operator norm of a 2-D convolution (zero or circular padding) on
    inputs (C, H, W) (bias ignored), by Gram iteration on the Fourier blocks of a circular embedding (Sedghi,
    Gupta and Long, ICLR 2019, for the blocks; Delattre, Barthelemy, Araujo and Allauzen, ICML 2023, for the
    bound).

    Zero-padding the input to a size N >= (H + pad_h, W + pad_w), N a multiple of the stride s, is an
    isometry, and the zero-padded strided convolution keeps a subset of the outputs of the circular
    strided convolution on N, so its norm is at most that one's. Splitting the input into its s_h * s_w
    polyphase components (a permutation) turns the latter into a circular stride-1 convolution on N / s
    with in * s_h * s_w channels and kernel K_phase[o, (c, r), q] = K[o, c, s q + r]; its norm is the
    largest sigma_max(K_hat(w)) over frequencies w, K_hat the 2-D DFT of that kernel at size N / s, one
    (out, in * s_h * s_w) matrix per frequency, each bounded by ``gram_iteration_bound``.

    With ``padding_mode="circular"`` (a padding within the kernel's reach, H and W multiples of the stride)
    the layer's outputs are, up to a circular shift of the input, outputs of the circular convolution on
    H x W itself: N = (H, W), no embedding, and the bound is exact up to the Gram iteration's slack.

    Args:
        conv: the convolution: any kernel size, stride, dilation, groups and padding (integers, "same" or
            "valid"), ``padding_mode`` "zeros" or "circular".
        input_size: the input's shape, (C, H, W) or (H, W) (only H and W are read).
        iters: Gram-iteration steps, >= 0 (default 12).

    Returns:
        The bound, a float.

    Raises:
        ValueError: for another ``padding_mode``, an input smaller than the (dilated) kernel, or a circular
            padding that the bound does not cover.
    """
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    pad_h, pad_w = _conv_padding(conv)
    height, width = input_size[-2], input_size[-1]
    if conv.padding_mode == "circular":
        if pad_h > (kh - 1) * dh or pad_w > (kw - 1) * dw or height % sh or width % sw:
            raise ValueError(
                f"{conv}: a circular padding bound needs a padding within the kernel's reach and an input size "
                f"{(height, width)} divisible by the stride"
            )
        size = (height // sh, width // sw)  # the circular convolution on the input itself: no embedding
    elif conv.padding_mode == "zeros":
        size = (math.ceil((height + pad_h) / sh), math.ceil((width + pad_w) / sw))
    else:
        raise ValueError(f"conv_operator_norm_upper_bound supports padding_mode 'zeros' and 'circular', got "
                         f"{conv.padding_mode!r}")  # fmt: skip
    weight = conv.weight.detach().double()
    out_channels, in_per_group = weight.shape[:2]
    # dilate, then pad the kernel to whole multiples of the stride
    qh, qw = math.ceil(((kh - 1) * dh + 1) / sh), math.ceil(((kw - 1) * dw + 1) / sw)
    kernel = weight.new_zeros(out_channels, in_per_group, qh * sh, qw * sw)
    kernel[:, :, : (kh - 1) * dh + 1 : dh, : (kw - 1) * dw + 1 : dw] = weight
    phases = kernel.view(out_channels, in_per_group, qh, sh, qw, sw).permute(0, 1, 3, 5, 2, 4)
    phases = phases.reshape(out_channels, in_per_group * sh * sw, qh, qw)
    if size[0] < qh or size[1] < qw:
        raise ValueError(f"input size {tuple(input_size)} is smaller than the kernel of {conv}")
    spectrum = torch.fft.rfft2(phases, s=size)  # (out, in / groups * s_h * s_w, N_h / s_h, N_w / s_w / 2 + 1)
    groups = conv.groups
    blocks = spectrum.permute(2, 3, 0, 1).reshape(*spectrum.shape[2:], groups, out_channels // groups, -1)
    return float(gram_iteration_bound(blocks, iters).max())


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _pool_overlap(kernel: Any, stride: Any) -> tuple[int, int]:
    """(number of inputs per window, largest number of windows an input belongs to)."""
    kh, kw = _pair(kernel)
    sh, sw = _pair(kernel if stride is None else stride)
    return kh * kw, math.ceil(kh / sh) * math.ceil(kw / sw)


def layer_upper_bound(layer: nn.Module, input_shape: Sequence[int], iters: int = 12) -> float:
    """A guaranteed upper bound on the operator norm of a Linear or Conv2d layer's linear part on inputs of
    ``input_shape`` (Gram iteration, ``iters`` steps); of any other standard layer, its Lipschitz rule."""
    return _layer_bound(layer, input_shape, iters)


def _layer_bound(module: nn.Module, input_shape: Sequence[int], iters: int) -> float:
    """Upper bound on the l2 Lipschitz constant of one standard layer, in eval mode."""
    if isinstance(module, CayleyConv2d):  # block-diagonal in the Fourier basis: its blocks bound it exactly
        return float(gram_iteration_bound(module.spectrum().detach(), iters).max())
    if isinstance(module, nn.Linear):
        return float(gram_iteration_bound(module.weight.detach(), iters))
    if isinstance(module, nn.Conv2d):
        return conv_operator_norm_upper_bound(module, input_shape, iters)
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Identity, nn.Flatten, nn.Dropout, MaxMin)):
        return max(1.0, abs(getattr(module, "negative_slope", 1.0)))
    if isinstance(module, nn.ELU):  # slope 1 above 0, alpha e^x below
        return max(1.0, abs(float(module.alpha)))
    if isinstance(module, (nn.PixelUnshuffle, nn.PixelShuffle)):  # permutations of the entries
        return 1.0
    if isinstance(module, nn.Sigmoid):
        return 0.25
    if isinstance(module, nn.MaxPool2d) and module.dilation in (1, (1, 1)):
        # |max(a) - max(b)| <= ||a - b||_2 over a window; each input lies in at most `overlap` windows
        return math.sqrt(_pool_overlap(module.kernel_size, module.stride)[1])
    if isinstance(module, nn.AvgPool2d) and (module.count_include_pad or module.padding in (0, (0, 0))):
        # (1 / size) B, B a 0/1 matrix with rows of `size` ones and columns of <= `overlap` ones
        size, overlap = _pool_overlap(module.kernel_size, module.stride)
        return math.sqrt(overlap / size)
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return 1.0 / math.sqrt(input_shape[-1] * input_shape[-2])
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
        scale = (module.running_var + module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight.detach().abs()
        return float(scale.max())
    raise TypeError(
        f"lipschitz_upper_bound has no rule for {type(module).__name__}; supported: nn.Sequential, "
        "Linear, Conv2d, CayleyConv2d, ReLU/LeakyReLU/ELU/Tanh/Sigmoid/MaxMin, MaxPool2d, AvgPool2d, "
        "AdaptiveAvgPool2d(1), PixelUnshuffle/PixelShuffle, "
        "BatchNorm (eval), Flatten, Identity, Dropout, or any module implementing lipschitz.LipschitzBounded "
        "(a `lipschitz_upper_bound(child_bound)` method)"
    )


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

    def record(module: nn.Module, args: tuple) -> None:
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
            return module.lipschitz_upper_bound(bound)
        if isinstance(module, nn.Sequential):
            result: Bound = 1.0
            for child in module:
                result = result * bound(child)
            return result
        if isinstance(module, LINEAR_LAYERS):
            return linear(module, shapes.get(module, ()))
        return _layer_bound(module, shapes.get(module, ()), 0)

    return bound(model)


def lipschitz_lower_bound(model: nn.Module, x: torch.Tensor, steps: int = 10) -> float:
    """An empirical lower bound on the l2 Lipschitz constant of ``model`` (eval mode): the largest spectral
    norm of its Jacobian at the inputs ``x``, max_i ||J_f(x_i)||_2, each by ``steps`` power-iteration steps
    on J^T J (each step one forward-mode and one reverse-mode product). Since L >= ||J_f(x)||_2 at every x,
    the ratio of this to ``lipschitz_upper_bound`` says how tight the certificate is (1: exact).

    Shape:
        x: (n, *shape), the inputs to probe.
    Returns:
        The largest estimate, a float (0 for an empty batch).
    """
    if x.shape[0] == 0:
        return 0.0
    x = x.detach()
    with preserved_state(model, mode=False), torch.enable_grad():
        v = torch.randn_like(x)
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
