"""Orthogonal circular convolutions (Cayley transform) checked against their explicit matrices."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from kernel_reg import lipschitz, models
from kernel_reg.app.training import spectral_upper_bound
from kernel_reg.lipschitz.orthogonal import CayleyConv2d


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "size"), [(3, 5, 3, (6, 6)), (5, 3, 3, (6, 7)), (4, 4, 5, (5, 5)), (2, 2, 1, (3, 4))]
)
def test_a_cayley_convolution_is_orthogonal_and_the_bound_covers_its_exact_norm(
    c_in, c_out, kernel, size, explicit_matrix
):
    torch.manual_seed(0)
    layer = CayleyConv2d(c_in, c_out, kernel, size).double()
    with torch.no_grad():
        layer.weight.mul_(3.0)  # far from the identity
    singular = np.linalg.svd(explicit_matrix(layer, (c_in, *size)), compute_uv=False)
    assert len(singular) == min(c_in, c_out) * size[0] * size[1]
    np.testing.assert_allclose(singular, 1.0, atol=1e-10)  # every singular value, not just the largest
    bound = lipschitz.layer_upper_bound(layer, (c_in, *size))
    assert singular.max() - 1e-12 <= bound <= 1.0 + 1e-3


def test_a_cayley_convolution_is_a_real_circular_convolution_with_a_trainable_kernel():
    torch.manual_seed(1)
    layer = CayleyConv2d(3, 4, 3, (5, 6), bias=True)
    with torch.no_grad():
        layer.bias.copy_(torch.arange(4.0))
    x = torch.randn(2, 3, 5, 6)
    shifted = layer(x.roll((2, -1), dims=(2, 3)))
    torch.testing.assert_close(shifted, layer(x).roll((2, -1), dims=(2, 3)), atol=1e-5, rtol=0)  # equivariant
    torch.testing.assert_close(layer(torch.zeros(1, 3, 5, 6))[0, :, 0, 0], torch.arange(4.0))  # the bias
    assert layer(x).dtype == torch.float32
    layer(x).square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"takes inputs \(n, 3, 5, 6\)"):
        layer(torch.zeros(1, 3, 6, 6))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CayleyConv2d(3, 4, 2, (5, 6))
    with pytest.raises(ValueError, match="each >= kernel_size"):
        CayleyConv2d(3, 4, 5, (4, 6))


def small_lipnet(seed: int) -> nn.Sequential:
    """``models.lipnet`` at width 2 for 1x12x12 inputs (unshuffles 12 -> 6 -> 3), orthogonalized."""
    torch.manual_seed(seed)
    body = list(models.lipnet(width=2))[:-1]
    return lipschitz.orthogonalize_(nn.Sequential(*body, nn.Linear(8 * 9, 3, bias=False)).double(), (1, 12, 12))


def test_orthogonalize_makes_every_convolution_orthogonal_and_the_network_1_lipschitz(explicit_matrix):
    model = small_lipnet(2)
    shapes = lipschitz.input_shapes(model, (1, 12, 12))
    convolutions = [m for m in model if isinstance(m, CayleyConv2d)]
    assert len(convolutions) == 5 and not any(isinstance(m, nn.Conv2d) for m in model.modules())
    for layer in convolutions:
        assert layer.size == shapes[layer][-2:]
        singular = np.linalg.svd(explicit_matrix(layer, shapes[layer]), compute_uv=False)
        np.testing.assert_allclose(singular, 1.0, atol=1e-10)
    lipschitz.renormalize_(model, steps=2000)  # the Linear layer: divided by its norm
    bound = lipschitz.lipschitz_upper_bound(model, (1, 12, 12))
    assert 1.0 - 1e-6 <= bound <= 1.0 + 1e-3
    x = torch.rand(64, 1, 12, 12, dtype=torch.float64)
    assert lipschitz.lipschitz_lower_bound(model, x) <= bound
    # the monitor's upper bound: reshaped kernels, and each orthogonal layer at its norm
    linear = np.linalg.svd(model[-1].weight.detach().numpy(), compute_uv=False).max()
    assert spectral_upper_bound(model) == pytest.approx(linear, rel=1e-3)
    # the margin's estimate of L: 1 for orthogonal layers, power iteration for the Linear one
    estimate = lipschitz.LipschitzMargin(eps=0.5, input_shape=(1, 12, 12), steps=500).lipschitz(model)
    assert float(estimate.detach()) == pytest.approx(bound, rel=1e-3)
    twin = small_lipnet(3)  # other kernels and vectors
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.eval()(x), model.eval()(x))


def test_orthogonalize_refuses_convolutions_it_cannot_make_orthogonal():
    with pytest.raises(ValueError, match=r"layer '1' is Conv2d\(1, 8"):  # zero padding, max-pooled VGG-5
        lipschitz.orthogonalize_(models.vgg5_stable(widths=(8, 8, 8, 8)), (1, 28, 28))
    strided = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1, padding_mode="circular"))
    with pytest.raises(ValueError, match="stride 1"):
        lipschitz.orthogonalize_(strided, (1, 8, 8))
    with pytest.raises(ValueError, match="wrap the Conv2d"):
        lipschitz.orthogonalize_(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), (1, 8, 8))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_an_orthogonal_lipnet_runs_on_the_device_of_its_weights(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    model = lipschitz.orthogonalize_(models.lipnet(width=4).to(device), (1, 28, 28))
    x = torch.rand(8, 1, 28, 28, device=device)
    out = model(x)
    assert out.device.type == device and all(p.device.type == device for p in model.parameters())
    twin = copy.deepcopy(model).cpu()
    torch.testing.assert_close(twin(x.cpu()), out.detach().cpu(), atol=1e-5, rtol=1e-4)
    out.logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    lipschitz.renormalize_(model, steps=500)
    assert lipschitz.lipschitz_upper_bound(model, (1, 28, 28), iters=20) <= 1.0 + 1e-4  # float32 rounding


def test_frozen_kernels_reuse_q_until_their_values_change():
    torch.manual_seed(4)
    layer = CayleyConv2d(3, 3, 3, (5, 5))
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    layer.requires_grad_(False)
    first = layer(x)
    q = layer._frozen[1]
    layer(x).sum().backward()  # input gradients through the cached Q
    assert x.grad.abs().sum() > 0 and layer._frozen[1] is q
    with torch.no_grad():
        layer.weight.data.mul_(2.0)  # a change that autograd's version counter does not see
    torch.testing.assert_close(layer(x), CayleyConv2d.linear(layer.requires_grad_(True), x))  # recomputed
    assert not torch.allclose(layer(x), first)
    layer.requires_grad_(False).double()
    assert layer(x.double()).dtype == torch.float64  # another dtype: computed again


def test_the_cayley_transform_stays_orthogonal_after_set_num_threads():
    """Some PyTorch CPU builds (MKL) solve large batched systems wrongly once torch.set_num_threads was
    called (seen here: a 256-channel layer's singular values up to 2.16, a Lipschitz bound of 2.16 for a
    1-Lipschitz network). The layer checks each solve and solves per frequency when the batch is wrong."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from kernel_reg.lipschitz.orthogonal import CayleyConv2d\n"
        "torch.set_num_threads(torch.get_num_threads())\n"
        "torch.manual_seed(0)\n"
        "layer = CayleyConv2d(256, 128, 3, (7, 7))\n"
        "with torch.no_grad():\n"
        "    s = torch.linalg.svdvals(layer.spectrum())\n"
        "print(float(s.min()), float(s.max()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    low, high = map(float, done.stdout.strip().splitlines()[-1].split())
    assert abs(low - 1) < 1e-4 and abs(high - 1) < 1e-4
