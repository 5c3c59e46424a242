"""Deformations against exact image transforms and analytic derivatives."""

import math

import torch

from kernel_reg.deformations import RandomDeformation, deform, identity_grid, tangent


def test_zero_field_is_identity():
    x = torch.rand(3, 2, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(deform(x, torch.zeros(3, 7, 9, 2, dtype=torch.float64)), x)


def test_whole_pixel_translation_shifts_the_image():
    x = torch.rand(1, 1, 8, 10, dtype=torch.float64)
    field = torch.zeros(1, 8, 10, 2, dtype=torch.float64)
    field[..., 0] = 2.0 / (10 - 1)  # one pixel to the right: T(x)(u) = x(u + 1 pixel)
    moved = deform(x, field)
    torch.testing.assert_close(moved[..., :-1], x[..., 1:])
    assert torch.all(moved[..., -1] == 0)


def smooth_image(height, width):
    grid = identity_grid(height, width, device=torch.device("cpu"), dtype=torch.float64)[0]
    return torch.exp(-((grid[..., 0] - 0.2) ** 2 + (grid[..., 1] + 0.1) ** 2) / 0.3), grid


def test_tangent_matches_analytic_derivative_of_smooth_image():
    height = width = 64
    image, grid = smooth_image(height, width)
    torch.manual_seed(0)
    field = RandomDeformation(amplitude=1.0, affine=0.1).sample(1, height, width, device=grid.device, dtype=grid.dtype)
    # analytic gradient of exp(-((u-0.2)^2 + (v+0.1)^2) / 0.3)
    d_x = image * (-2 * (grid[..., 0] - 0.2) / 0.3)
    d_y = image * (-2 * (grid[..., 1] + 0.1) / 0.3)
    exact = d_x * field[0, ..., 0] + d_y * field[0, ..., 1]
    approx = tangent(image[None, None], field[:, None])[0, 0, 0]
    inner = (slice(2, -2), slice(2, -2))
    assert (approx - exact)[inner].abs().max() < 1e-2 * exact.abs().max()


def test_tangent_is_the_first_order_term_of_the_deformation():
    height = width = 64
    image, grid = smooth_image(height, width)
    torch.manual_seed(1)
    field = RandomDeformation().sample(1, height, width, device=grid.device, dtype=grid.dtype)
    a = 1e-2
    x = image[None, None]
    finite = (deform(x, field, a) - deform(x, field, -a)) / (2 * a)
    approx = tangent(x, field[:, None])[:, 0]
    error = (finite - approx)[..., 2:-2, 2:-2].norm() / approx[..., 2:-2, 2:-2].norm()
    assert error < 0.05


def test_random_fields_have_the_requested_amplitude():
    torch.manual_seed(2)
    sampler = RandomDeformation(amplitude=2.0, affine=0.0, control=3)
    fields = sampler.sample(2000, 28, 28, device=torch.device("cpu"), dtype=torch.float64)
    # at the control points the field is exactly the Gaussian draw, in units of 2 / (size - 1) per pixel
    corner_pixels = fields[:, 0, 0, 0] / (2.0 / 27)
    assert math.isclose(float(corner_pixels.std()), 2.0, rel_tol=0.1)


def test_call_deforms_each_image_differently():
    torch.manual_seed(3)
    x = torch.rand(4, 1, 28, 28).repeat(2, 1, 1, 1)
    out = RandomDeformation(amplitude=2.0)(x)
    assert out.shape == x.shape
    assert not torch.allclose(out[:4], out[4:])
