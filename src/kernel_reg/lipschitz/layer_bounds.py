"""Guaranteed upper bounds on the operator norm of one layer: Gram iteration for Linear and Conv2d (on the
convolution's Fourier symbol), exact blocks for orthogonal convolutions, a rule for each standard layer."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import (
    check_int,
)
from .activations import MaxMin
from .orthogonal import CayleyConv2d

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
    out: torch.Tensor = log_sigma.exp()
    return out


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
        out: float = max(1.0, abs(getattr(module, "negative_slope", 1.0)))
        return out
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
