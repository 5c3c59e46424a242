"""The networks of the paper, as plain ``nn.Sequential`` stacks on [0, 1] pixels.

Input normalisation is the first layer, so attacks, penalties and certificates all act on pixels.
Being sequences of standard layers (plus ``BasicBlock``, which states its own Lipschitz rule) lets
``lipschitz.lipschitz_upper_bound`` walk every model here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import check_choice, check_int
from .lipschitz.activations import MaxMin

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

VGG11 = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")
VGG16 = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P")


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, so they follow ``.to(device)``.

    Args:
        mean: the per-channel means, length C.
        std: the per-channel standard deviations, length C, > 0.

    Shape:
        x: (n, C, H, W); output: (n, C, H, W).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std, channel by channel."""
        return (x - self.mean) / self.std

    def lipschitz_upper_bound(self, child_bound: Callable[[nn.Module], float]) -> float:
        """A diagonal map: its l2 Lipschitz constant is 1 / min(std)."""
        return float(1.0 / self.std.min())


class BasicBlock(nn.Module):
    """Residual block without BatchNorm: relu(conv2(relu(conv1(x))) + shortcut(x)).

    conv1: 3x3, ``stride``; conv2: 3x3; shortcut: the identity, or a 1x1 convolution with ``stride`` when the
    stride or the width changes; no biases. A ``lipschitz.LipschitzBounded`` module.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: conv1's and the shortcut's stride (default 1).

    Shape:
        x: (n, in_planes, H, W); output: (n, planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(conv2(relu(conv1(x))) + shortcut(x))."""
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))

    def lipschitz_upper_bound(self, child_bound: Callable[[nn.Module], float]) -> float:
        """Sum rule: Lip(relu(g(x) + s(x))) <= Lip(conv2) Lip(conv1) + Lip(s)."""
        return child_bound(self.conv2) * child_bound(self.conv1) + child_bound(self.shortcut)


# ELU: smooth (continuous derivative), so input-gradient penalties see its curvature, which ReLU's zero second
# derivative hides from double backpropagation (bench/README.md, "How close the finite difference is")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "maxmin": MaxMin, "elu": nn.ELU}


def _kaiming_init(model: nn.Sequential) -> nn.Sequential:
    """Convolutions: N(0, 2 / (kh * kw * out)), biases zero (the original's initialisation)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _features(
    config: Sequence[int | str], in_channels: int, pool: str, bias: bool, activation: str = "relu"
) -> list[nn.Module]:
    """3x3 convolutions, each followed by ``activation``; "P" is a 2x2 max or average pooling."""
    layers: list[nn.Module] = []
    for item in config:
        if item == "P":
            layers.append(nn.MaxPool2d(2, 2) if pool == "max" else nn.AvgPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=1, bias=bias), ACTIVATIONS[activation]()]
            in_channels = int(item)
    return layers


def _cifar_vgg(config: Sequence[int | str], num_classes: int) -> nn.Sequential:
    return _kaiming_init(
        nn.Sequential(
            Normalize(CIFAR_MEAN, CIFAR_STD),
            *_features(config, 3, pool="max", bias=True),
            nn.Flatten(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
    )


def vgg11(num_classes: int = 10) -> nn.Sequential:
    """VGG-11 for 3x32x32 inputs in [0, 1] (CIFAR-10 normalisation inside): 3x3 convolutions with ReLU and
    2x2 max-pooling, no BatchNorm, classifier 512-512-k.

    Args:
        num_classes: k (default 10).

    Shape:
        x: (n, 3, 32, 32); output: logits (n, k).
    """
    return _cifar_vgg(VGG11, num_classes)


def vgg16(num_classes: int = 10) -> nn.Sequential:
    """VGG-16 for 3x32x32 inputs in [0, 1] (CIFAR-10 normalisation inside): 3x3 convolutions with ReLU and
    2x2 max-pooling, no BatchNorm, classifier 512-512-k.

    Args:
        num_classes: k (default 10).

    Shape:
        x: (n, 3, 32, 32); output: logits (n, k).
    """
    return _cifar_vgg(VGG16, num_classes)


def vgg5_stable(
    num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512), activation: str = "relu"
) -> nn.Sequential:
    """The 'stable' VGG-5 for 1x28x28 inputs in [0, 1] (MNIST normalisation inside): four 3x3 convolutions
    each followed by ReLU and 2x2 average pooling (28 -> 14 -> 7 -> 3 -> 1), then a linear layer; no biases
    anywhere.

    Args:
        num_classes: k (default 10).
        widths: the four convolutions' output channels (default (64, 128, 256, 512)).
        activation: "relu" (default), "maxmin" (``MaxMin``; even widths) or "elu" (smooth).

    Shape:
        x: (n, 1, 28, 28); output: logits (n, k).
    """
    config: list[int | str] = []
    for width in widths:
        config += [width, "P"]
    return _kaiming_init(
        nn.Sequential(
            Normalize(MNIST_MEAN, MNIST_STD),
            *_features(config, 1, pool="avg", bias=False, activation=activation),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes, bias=False),
        )
    )


def resnet18(num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 for 3x32x32 inputs in [0, 1] (CIFAR-10 normalisation inside) without BatchNorm: a 3x3
    convolution with ReLU, four stages of two ``BasicBlock`` (64, 128, 256, 512 channels, strides 1, 2, 2, 2), 4x4
    average pooling and a linear layer.

    Args:
        num_classes: k (default 10).

    Shape:
        x: (n, 3, 32, 32); output: logits (n, k).
    """
    layers: list[nn.Module] = [
        Normalize(CIFAR_MEAN, CIFAR_STD),
        nn.Conv2d(3, 64, 3, padding=1, bias=False),
        nn.ReLU(),
    ]
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
        in_planes = planes
    layers += [nn.AvgPool2d(4), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def lipnet(num_classes: int = 10, width: int = 32, activation: str = "maxmin") -> nn.Sequential:
    """A network for certified robustness on 1x28x28 inputs in [0, 1], whose every layer is at most as
    Lipschitz as its linear parts: mean subtraction (no division by the standard deviation, which would
    multiply the Lipschitz constant by 1/std), five 3x3 stride-1 convolutions with ``activation`` (MaxMin by
    default: 1-Lipschitz and gradient-norm preserving), downsampling by pixel-unshuffle (a permutation, norm
    1, where pooling would halve the margin), and a linear classifier; no biases. The convolutions pad
    circularly: each is then exactly a circular convolution, whose operator norm the Fourier blocks give
    without the slack of embedding a zero-padded one (``lipschitz.conv_operator_norm_upper_bound``), so the
    certified radius loses nothing to the bound.

    28x28: conv(1 -> w), conv(w -> w), unshuffle -> 14x14, conv(4w -> 2w), conv(2w -> 2w), unshuffle ->
    7x7, conv(8w -> 4w), linear(4w * 49 -> k). With the operator norm of every convolution and of the
    linear layer at most 1 (``spectral.project_(model, 1.0, norm="operator", input_shape=(1, 28, 28))``, or
    near 1 throughout training with ``spectral.normalize_(model, (1, 28, 28))``), the network is 1-Lipschitz.

    Args:
        num_classes: k (default 10).
        width: w, the first convolutions' channels (even; default 32, about 0.5M parameters).
        activation: "maxmin" (default), "relu" or "elu".

    Shape:
        x: (n, 1, 28, 28); output: logits (n, k).
    """
    check_int("num_classes", num_classes)
    check_choice("activation", activation, tuple(ACTIVATIONS))
    if not isinstance(width, int) or isinstance(width, bool) or width < 2 or width % 2:
        raise ValueError(f"width must be an even integer >= 2 (MaxMin pairs channels), got {width!r}")
    act = ACTIVATIONS[activation]

    def conv(c_in: int, c_out: int) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular", bias=False)

    return nn.Sequential(
        Normalize(MNIST_MEAN, (1.0,)),
        conv(1, width), act(),
        conv(width, width), act(),
        nn.PixelUnshuffle(2),
        conv(4 * width, 2 * width), act(),
        conv(2 * width, 2 * width), act(),
        nn.PixelUnshuffle(2),
        conv(8 * width, 4 * width), act(),
        nn.Flatten(),
        nn.Linear(4 * width * 49, num_classes, bias=False),
    )  # fmt: skip


# the model constructors by name
MODELS: dict[str, Callable[..., nn.Sequential]] = {
    "vgg11": vgg11,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "vgg5_stable": vgg5_stable,
    "lipnet": lipnet,
}
# the models that take a width and an activation
WIDTH_MODELS = ("vgg5_stable", "lipnet")


def build(name: str, num_classes: int = 10, width: int = 64, activation: str | None = None) -> nn.Sequential:
    """A model by name: one of ``MODELS`` ("vgg11", "vgg16", "resnet18", "vgg5_stable", "lipnet").

    Args:
        name: the model's name (KeyError for another).
        num_classes: k (default 10).
        width: vgg5_stable: the first convolution's width, doubled per stage (default 64); lipnet: its w.
        activation: vgg5_stable and lipnet: a name of ``ACTIVATIONS`` ("relu", "maxmin", "elu"); None
            (default): the model's own (vgg5_stable: ReLU, lipnet: MaxMin).

    Returns:
        The model, a ``nn.Sequential`` mapping inputs in [0, 1] to logits (n, k).
    """
    if name == "vgg5_stable":
        widths = (width, 2 * width, 4 * width, 8 * width)
        return vgg5_stable(num_classes, widths=widths, activation=activation or "relu")
    if name == "lipnet":
        return lipnet(num_classes, width=width, activation=activation or "maxmin")
    return MODELS[name](num_classes)
