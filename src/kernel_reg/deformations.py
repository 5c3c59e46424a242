"""Differentiable image deformations and their tangent vectors.

A displacement field v maps each pixel position u (normalised coordinates in [-1, 1], as used by
``grid_sample`` with ``align_corners=True``) to a shift v(u). The deformed image is

    T_v(x)(u) = x(u + v(u)),

computed by bilinear resampling, and its tangent vector is the first-order term in a,

    t = d/da T_{a v}(x) |_{a=0} = <grad_u x(u), v(u)>,

with the image gradient grad_u x taken by central differences (zero outside the image, as
``grid_sample`` pads). Bilinear resampling has kinks exactly at the pixel centres, so its one-sided
derivative at a = 0 is not used; central differences are the derivative of the smooth image model.

Random fields are smooth (a coarse Gaussian control grid upsampled bicubically) plus a small linear map
v(u) = A u, as in the small elastic and affine distortions of Infinite-MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .arguments import check_int, check_nonnegative


def identity_grid(height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sampling grid of the identity map: grid[0, h, w] = (u_x, u_y), the pixel's normalised coordinates in
    [-1, 1] ((x, y) order, ``align_corners=True`` convention).

    Args:
        height: H, the image height.
        width: W, the image width.
        device: the grid's device (keyword-only).
        dtype: the grid's dtype (keyword-only).

    Shape:
        Output: (1, H, W, 2).
    """
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)


def deform(images: torch.Tensor, field: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """T_{scale * v}(x)(u) = x(u + scale * v(u)): the images resampled bilinearly at the displaced positions
    (zero outside the image), differentiable with respect to both images and field.

    Args:
        images: x, (n, C, H, W).
        field: v, displacements in normalised units, (x, y) order, (n, H, W, 2).
        scale: the factor applied to the field (default 1.0).

    Shape:
        images: (n, C, H, W); field: (n, H, W, 2); output: (n, C, H, W).
    """
    height, width = images.shape[-2:]
    grid = identity_grid(height, width, device=images.device, dtype=images.dtype) + scale * field
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def image_gradient(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central-difference derivatives of images with respect to the normalised coordinates:

        d/du_x x = (x[h, w + 1] - x[h, w - 1]) * (W - 1) / 4,  d/du_y x = (x[h + 1, w] - x[h - 1, w]) * (H - 1) / 4,

    with zeros outside the image (one pixel is 2 / (size - 1) normalised units).

    Shape:
        images: (n, C, H, W); output: (d_x, d_y), each (n, C, H, W).
    """
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1))
    # one pixel is 2 / (size - 1) normalised units, a central difference spans two pixels
    d_x = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) * ((width - 1) / 4.0)
    d_y = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) * ((height - 1) / 4.0)
    return d_x, d_y


def tangent(images: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
    """Tangent vectors t_m = d/da T_{a v_m}(x) |_{a=0} = <grad_u x(u), v_m(u)> = d_x * v_m,x + d_y * v_m,y, with
    the central differences of ``image_gradient``.

    Args:
        images: x, (n, C, H, W).
        fields: m displacement fields per image, (n, m, H, W, 2).

    Shape:
        images: (n, C, H, W); fields: (n, m, H, W, 2); output: (n, m, C, H, W).
    """
    d_x, d_y = image_gradient(images)
    v_x = fields[..., 0].unsqueeze(2)  # (n, m, 1, H, W)
    v_y = fields[..., 1].unsqueeze(2)
    return d_x.unsqueeze(1) * v_x + d_y.unsqueeze(1) * v_y


@dataclass(frozen=True)
class RandomDeformation:
    """Sampler of smooth random displacement fields v(u) = s(u) + A u, u in [-1, 1]^2 (as in the small elastic and
    affine distortions of Infinite-MNIST): s a control x control grid of Gaussian displacements upsampled
    bicubically to H x W, A a Gaussian 2 x 2 matrix. Frozen dataclass; the draws use torch's global RNG.

    Args:
        amplitude: standard deviation of the control-grid displacements of s, in pixels, >= 0 (default 1.0).
        control: side of the coarse control grid, >= 2 (default 4; larger: less smooth fields).
        affine: standard deviation of the entries of the linear part A, in normalised units, >= 0
            (default 0.05).

    Shape:
        Call: images (n, C, H, W) -> deformed images (n, C, H, W).

    Example:
        >>> sampler = RandomDeformation(amplitude=1.0, control=4, affine=0.05)
        >>> fields = sampler.sample(8, 28, 28, device=x.device, dtype=x.dtype)  # (8, 28, 28, 2)
        >>> augmented = sampler(x)  # one random deformation per image
    """

    amplitude: float = 1.0
    control: int = 4
    affine: float = 0.05

    def __post_init__(self) -> None:
        check_nonnegative("amplitude", self.amplitude)
        check_int("control", self.control, minimum=2)
        check_nonnegative("affine", self.affine)

    def sample(self, count: int, height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``count`` random fields, drawn from torch's global RNG on ``device``.

        Args:
            count: the number of fields.
            height: H, the image height.
            width: W, the image width.
            device: the fields' device (keyword-only).
            dtype: the fields' dtype (keyword-only).

        Returns:
            Displacements in normalised units, (x, y) order, (count, H, W, 2), for ``deform``.
        """
        coarse = torch.randn(count, 2, self.control, self.control, device=device, dtype=dtype)
        smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        pixel = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=device, dtype=dtype)
        smooth = smooth.permute(0, 2, 3, 1) * (self.amplitude * pixel)
        linear = self.affine * torch.randn(count, 2, 2, device=device, dtype=dtype)
        positions = identity_grid(height, width, device=device, dtype=dtype)  # (1, H, W, 2)
        return smooth + torch.einsum("nij,hwj->nhwi", linear, positions[0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """One random deformation of each image of a batch (data augmentation): T_{v_i}(x_i), (n, C, H, W)."""
        fields = self.sample(images.shape[0], *images.shape[-2:], device=images.device, dtype=images.dtype)
        return deform(images, fields)
