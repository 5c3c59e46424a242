"""Orthogonal circular convolutions by the Cayley transform (Trockman and Kolter, "Orthogonalizing
Convolutional Layers with the Cayley Transform", ICLR 2021).

A circular stride-1 convolution on H x W images is block-diagonal in the Fourier basis: one
(out, in) matrix K_hat(f) per frequency f. Dividing a layer by its operator norm (``spectral.normalize_``)
holds its largest singular value at 1 and lets the others shrink, which costs a 1-Lipschitz network margin
at every layer. The Cayley transform of the skew-Hermitian part of a free kernel,

    A(f) = W_hat(f) - W_hat(f)^H,    Q(f) = (I + A(f))^{-1} (I - A(f)),

is unitary at every frequency, so the convolution x -> F^{-1}(Q F x) is orthogonal: every singular value is
1, norms and gradient norms are kept (with the ``MaxMin`` activation, the whole network is gradient-norm
preserving). Q(-f) is the conjugate of Q(f) because W is real, so the output is real.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..arguments import (
    check_int,
)


def _solved(a: torch.Tensor, x: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-3) -> bool:
    """Whether A X = B to ``tolerance`` (relative) on a fixed probe vector v, per system of the batch:
    ||A (X v) - B v|| <= tolerance (||B v|| + ||A|| ||X v||), a matrix-vector product's cost."""
    with torch.no_grad():
        probe = torch.arange(x.shape[-1], device=x.device, dtype=torch.float64).cos().to(x.dtype)[:, None]
        xv, bv = x @ probe, b @ probe
        residual = torch.linalg.vector_norm(a @ xv - bv, dim=(-2, -1))
        scale = torch.linalg.vector_norm(bv, dim=(-2, -1)) + torch.linalg.matrix_norm(a) * torch.linalg.vector_norm(
            xv, dim=(-2, -1)
        )
        return bool((residual <= tolerance * scale).all())


class CayleyConv2d(nn.Module):
    """An orthogonal circular convolution on inputs of one spatial size (see the module docstring).

    The free parameter is a c x c x k x k kernel, c = max(in, out); the layer applies the (out, in) corner
    of Q(f): orthonormal columns when out >= in (an isometry), orthonormal rows when out < in (operator
    norm 1). Q is recomputed from the kernel at every forward pass that needs a graph to the kernel (a
    batched c x c solve per frequency), so training moves the kernel freely and the layer stays orthogonal
    to rounding error; without one (``torch.no_grad()``, or a kernel that does not require grad, as in
    ``kernel-reg evaluate``) it is reused while the kernel keeps its values.

    Args:
        in_channels, out_channels: the channel counts.
        kernel_size: k, odd, the reach of the free kernel (the orthogonal layer's own kernel spans the image).
        size: (H, W), the spatial size of the inputs, each >= k.
        bias: whether to add a learned bias per output channel (default False; it does not change the
            Lipschitz constant).

    Shape:
        x: (n, in, H, W); output: (n, out, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, size: Sequence[int], bias: bool = False
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.out_channels = check_int("out_channels", out_channels)
        self.kernel_size = check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred kernel), got {kernel_size}")
        if len(size) != 2 or min(size) < kernel_size:
            raise ValueError(f"size must be (H, W), each >= kernel_size {kernel_size}, got {tuple(size)}")
        self.size = (int(size[0]), int(size[1]))
        channels = max(in_channels, out_channels)
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default
        self._frozen: tuple[torch.Tensor, torch.Tensor] | None = None  # (kernel, its Q) when no graph is needed

    def spectrum(self) -> torch.Tensor:
        """Q(f)'s (out, in) corner at every frequency of the real FFT, (H, W // 2 + 1, out, in), complex."""
        k, (height, width) = self.kernel_size, self.size
        kernel = self.weight.new_zeros(*self.weight.shape[:2], height, width)
        kernel[:, :, :k, :k] = self.weight
        kernel = kernel.roll((-(k // 2), -(k // 2)), dims=(2, 3))  # centred at pixel (0, 0)
        w_hat = torch.fft.rfft2(kernel).permute(2, 3, 0, 1)  # (H, W // 2 + 1, c, c)
        skew = w_hat - w_hat.mH
        eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
        try:
            q = torch.linalg.solve(eye + skew, eye - skew)
            batched = _solved(eye + skew, q, eye - skew)
        except RuntimeError:  # the same fault, when it breaks the LU pivots: "Pivots given to lu_solve ..."
            batched = False
        if not batched:
            # some PyTorch CPU builds (MKL) return wrong batched solutions of large systems, or fail, once
            # torch.set_num_threads was called; each system alone is solved right
            warnings.warn(
                f"{self}: torch.linalg.solve returned a wrong batched solution (a fault of this PyTorch build "
                "after torch.set_num_threads); solving each frequency alone. Set the thread count before the "
                "process starts (OMP_NUM_THREADS=N) to avoid the slower path",
                RuntimeWarning,
                stacklevel=2,
            )
            pairs = zip((eye + skew).flatten(0, 1), (eye - skew).flatten(0, 1))
            q = torch.stack([torch.linalg.solve(a, b) for a, b in pairs]).view_as(skew)
            if not _solved(eye + skew, q, eye - skew):
                raise RuntimeError(f"{self}: torch.linalg.solve gives wrong solutions on this machine")
        out: torch.Tensor = q[..., : self.out_channels, : self.in_channels]
        return out

    def _frozen_spectrum(self) -> torch.Tensor:
        """``spectrum()`` without a graph, computed again only when the kernel has changed (compared value
        by value): an attack's hundreds of passes on frozen weights solve for Q once."""
        weight = self.weight.detach()
        if self._frozen is not None:
            kernel, q = self._frozen
            if (kernel.device, kernel.dtype) == (weight.device, weight.dtype) and torch.equal(kernel, weight):
                return q
        with torch.no_grad():
            q = self.spectrum()
        self._frozen = (weight.clone(), q)
        return q

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The layer without its bias: F^{-1}(Q F x)."""
        if tuple(x.shape[-2:]) != self.size or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"{self} takes inputs (n, {self.in_channels}, {self.size[0]}, {self.size[1]}), got {tuple(x.shape)}"
            )
        q = self.spectrum() if torch.is_grad_enabled() and self.weight.requires_grad else self._frozen_spectrum()
        freqs_h, freqs_w = q.shape[:2]
        x_hat = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(freqs_h * freqs_w, self.in_channels, -1)
        y_hat = q.reshape(freqs_h * freqs_w, self.out_channels, self.in_channels) @ x_hat  # (f, out, n)
        y_hat = y_hat.view(freqs_h, freqs_w, self.out_channels, -1).permute(3, 2, 0, 1)
        out: torch.Tensor = torch.fft.irfft2(y_hat, s=self.size)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y if self.bias is None else y + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, size={self.size}, "
                f"bias={self.bias is not None}")  # fmt: skip
