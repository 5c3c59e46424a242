"""The spectral constraint and penalty against numpy's SVD."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kernel_reg import spectral


def numpy_sigmas(weight):
    return np.linalg.svd(weight.detach().reshape(weight.shape[0], -1).double().numpy(), compute_uv=False)


def layered_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 20),
        nn.ReLU(),
        nn.Linear(20, 30),
    )


def test_projection_clips_every_singular_value_like_numpy():
    model = layered_model()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spectral.project_(model, 1.5)
    for name, layer in spectral.spectral_layers(model):
        w = before[f"{name}.weight"].reshape(layer.weight.shape[0], -1).double().numpy()
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        expected = (u * np.minimum(s, 1.5)) @ vt
        got = layer.weight.detach().reshape(w.shape).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert numpy_sigmas(layer.weight).max() <= 1.5 * (1 + 1e-5)
        assert s.max() > 1.5  # the test did clip something
    # biases and BatchNorm parameters untouched
    for name, p in model.named_parameters():
        if not name.endswith("weight") or name.startswith("1."):
            assert torch.equal(p, before[name])


def test_projection_changes_nothing_inside_the_ball():
    model = layered_model()
    spectral.project_(model, 100.0)
    again = {n: p.detach().clone() for n, p in model.named_parameters()}
    spectral.project_(model, 100.0)
    assert all(torch.equal(p, again[n]) for n, p in model.named_parameters())


def test_projection_is_idempotent_and_exact_in_float64():
    mat = torch.randn(40, 25, dtype=torch.float64) * 2
    once = spectral.clip_singular_values(mat, 1.0)
    assert np.linalg.svd(once.numpy(), compute_uv=False).max() <= 1.0 + 1e-12
    torch.testing.assert_close(spectral.clip_singular_values(once, 1.0 + 1e-9), once)


def test_tau_schedule():
    assert spectral.tau_schedule(1.5, 2.0, 0) == pytest.approx(7.5)
    assert spectral.tau_schedule(1.5, 2.0, 4) == pytest.approx(1.5 * (1 + 4 * math.exp(-2)))
    assert spectral.tau_schedule(1.5, 2.0, 1000) == pytest.approx(1.5)


@pytest.mark.parametrize("method", ["power", "svd"])
def test_spectral_penalty_meets_numpy_svd(method):
    model = layered_model()
    penalty = spectral.SpectralNormPenalty(lmbda=0.3, method=method, steps=1)
    for _ in range(1 if method == "svd" else 300):  # persistent vectors: one step per call
        value = penalty(model)
    expected = [numpy_sigmas(layer.weight).max() for _, layer in spectral.spectral_layers(model)]
    got = [float(s.detach()) for s in penalty.sigmas(model)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert float(value.detach()) == pytest.approx(0.3 * sum(s**2 for s in expected), rel=1e-4)


def test_spectral_penalty_gradient_is_that_of_sigma_squared():
    layer = nn.Linear(6, 4, bias=False).double()
    value = spectral.SpectralNormPenalty(lmbda=1.0, method="svd")(layer)
    (grad,) = torch.autograd.grad(value, layer.weight)
    u, s, vt = np.linalg.svd(layer.weight.detach().numpy())
    np.testing.assert_allclose(grad.numpy(), 2 * s[0] * np.outer(u[:, 0], vt[0]), rtol=1e-8)
