"""The paper's networks: shapes, parameter counts worked out by hand, and the normalisation inside."""

import math

import pytest
import torch
from torch import nn

from kernel_reg import models


@pytest.mark.parametrize(
    ("build", "shape", "params"),
    [
        # convolutions 9,220,480 + classifier 2 * (512 * 512 + 512) + 512 * 10 + 10
        (models.vgg11, (3, 32, 32), 9_750_922),
        # 13 convolutions 14,714,688 + the same classifier
        (models.vgg16, (3, 32, 32), 15_245_130),
        # the usual CIFAR ResNet-18 (11,173,962) less its 9,600 BatchNorm parameters
        (models.resnet18, (3, 32, 32), 11_164_362),
        # 1*64*9 + 64*128*9 + 128*256*9 + 256*512*9 + 512*10, no biases
        (models.vgg5_stable, (1, 28, 28), 1_553_984),
    ],
)
def test_shapes_and_parameter_counts(build, shape, params):
    model = build()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    assert build(num_classes=7)(torch.rand(1, *shape)).shape == (1, 7)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_vgg5_stable_has_average_pooling_and_no_biases():
    model = models.vgg5_stable(widths=(8, 8, 8, 16))
    assert all(p.dim() > 1 for p in model.parameters())  # weights only
    assert sum(isinstance(m, nn.AvgPool2d) for m in model) == 4
    assert not any(isinstance(m, nn.MaxPool2d) for m in model)


def test_normalisation_is_inside_the_model():
    model = models.vgg11().double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    mean = torch.tensor(models.CIFAR_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(models.CIFAR_STD, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(model(x), model[1:]((x - mean) / std))
    assert model[0].mean.dtype == torch.float64  # buffers follow .to()


def test_maxmin_is_one_lipschitz_and_keeps_gradient_norms():
    torch.manual_seed(0)
    act = models.MaxMin()
    a, b = torch.randn(64, 6, 3, 3, dtype=torch.float64), torch.randn(64, 6, 3, 3, dtype=torch.float64)
    assert torch.all((act(a) - act(b)).flatten(1).norm(dim=1) <= (a - b).flatten(1).norm(dim=1) + 1e-12)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad(act(x), x, grad_outputs=g)
    assert torch.allclose(grad.norm(dim=1), g.norm(dim=1))  # a permutation: the norm of the gradient is kept
    with pytest.raises(ValueError, match="even number"):
        act(torch.zeros(1, 3))


def test_lipnet_maps_images_to_logits_and_is_bounded_by_its_layers():
    from kernel_reg import lipschitz, spectral

    model = models.build("lipnet", 10, width=4).double()
    assert model(torch.rand(3, 1, 28, 28, dtype=torch.float64)).shape == (3, 10)
    shapes = lipschitz.input_shapes(model, (1, 28, 28))
    product = math.prod(
        lipschitz.layer_upper_bound(layer, shapes[layer]) for _, layer in spectral.spectral_layers(model)
    )
    assert lipschitz.lipschitz_upper_bound(model, (1, 28, 28)) == pytest.approx(product)  # nothing amplifies
    assert isinstance(models.build("vgg5_stable", width=4, activation="maxmin")[2], models.MaxMin)
