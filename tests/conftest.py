"""Shared fixtures: tiny float64 models on which brute-force definitions are cheap."""

import math

import pytest
import torch
from torch import nn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_cnn(classes: int = 5, channels: int = 1) -> nn.Sequential:
    """A small smooth convolutional classifier for inputs (channels, 6, 6), in float64."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, classes),
    ).double()


@pytest.fixture
def model() -> nn.Sequential:
    return tiny_cnn()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 6, 6, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=generator)
    return x, y


# The tiny run every end-to-end test trains: 64 embedded images, a width-4 VGG-5, two epochs.
TINY_FIELDS = dict(
    data_dir="embedded", n_train=64, n_val=64, n_test=64, width=4, batch_size=32, num_epochs=2, eval_delta=1,
    probe_size=16,
)  # fmt: skip
CHEAP = dict(steps=2, deformations=2)  # cheap inner loops, for whichever regularizer takes them


@pytest.fixture
def tiny():
    """``tiny(root, **changes)``: the tiny run's Config under ``root``, with ``changes`` (fields and
    regularizer keys) and cheap inner loops."""
    from kernel_reg.app.config import preset_config

    def make(root, **changes):
        values = {**TINY_FIELDS, "root": str(root), **changes}
        return preset_config("fmnist1000_vgg5", **values).updated(CHEAP, strict=False)

    return make


@pytest.fixture
def tiny_flags():
    """The tiny run as command-line flags."""
    return [item for key, value in TINY_FIELDS.items() for item in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture
def explicit_matrix():
    """``explicit_matrix(layer, input_shape)``: the matrix of the linear part of ``layer`` on inputs of
    ``input_shape`` (float64), column by column: the exact operator its norms are checked against."""

    def build(layer, input_shape):
        size = math.prod(input_shape)
        basis = torch.eye(size, dtype=torch.float64).view(size, *input_shape)
        with torch.no_grad():
            out = layer(basis) - layer(torch.zeros(1, *input_shape, dtype=torch.float64))
        return out.flatten(1).T.numpy()

    return build
