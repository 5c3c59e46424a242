"""Shared fixtures: tiny float64 models on which brute-force definitions are cheap."""

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
