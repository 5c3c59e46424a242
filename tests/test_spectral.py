"""Spectral norms against numpy's SVD, explicit convolution matrices and empirical Lipschitz ratios."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from kernel_reg import models, spectral


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


def explicit_matrix(layer, input_shape):
    """The matrix of the linear part of ``layer`` on inputs of ``input_shape``, column by column."""
    size = math.prod(input_shape)
    basis = torch.eye(size, dtype=torch.float64).view(size, *input_shape)
    with torch.no_grad():
        out = layer(basis) - layer(torch.zeros(1, *input_shape, dtype=torch.float64))
    return out.flatten(1).T.numpy()


CONVS = [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, stride=2),
    dict(in_channels=3, out_channels=2, kernel_size=(3, 2), padding=0),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=2, dilation=2),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=2),
]


@pytest.mark.parametrize("config", CONVS)
def test_conv_operator_norm_is_the_top_singular_value_of_its_matrix(config):
    torch.manual_seed(1)
    conv = nn.Conv2d(**config).double()
    shape = (config["in_channels"], 6, 5)
    exact = np.linalg.svd(explicit_matrix(conv, shape), compute_uv=False).max()
    assert spectral.operator_norm(conv, shape, iters=5000, tol=1e-13) == pytest.approx(exact, rel=1e-5)
    upper = spectral.conv_operator_norm_upper_bound(conv, shape, iters=16)
    assert exact <= upper <= 1.5 * exact


def test_gram_iteration_bounds_and_converges_to_sigma_max():
    torch.manual_seed(2)
    mats = torch.randn(5, 7, 4, dtype=torch.float64) * torch.tensor([1e-3, 1, 10, 1e3, 1e6]).view(5, 1, 1)
    exact = np.linalg.svd(mats.numpy(), compute_uv=False).max(1)
    for iters in (0, 2, 6):
        assert np.all(spectral.gram_iteration_bound(mats, iters).numpy() >= exact * (1 - 1e-12))
    np.testing.assert_allclose(spectral.gram_iteration_bound(mats, 16).numpy(), exact, rtol=1e-4)
    assert float(spectral.gram_iteration_bound(torch.zeros(3, 3), 5)) == 0.0


def tiny_vgg():
    torch.manual_seed(3)
    return nn.Sequential(
        models.Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.25)),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 5),
    ).double()


def tiny_resnet():
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        models.BasicBlock(4, 4),
        models.BasicBlock(4, 8, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).double()


def tiny_vgg5():
    torch.manual_seed(5)
    return models.vgg5_stable(num_classes=5, widths=(3, 4, 4, 6)).double()


def jacobian_norm(model, x):
    return np.linalg.svd(jacobian(lambda z: model(z[None])[0], x).reshape(5, -1).numpy(), compute_uv=False).max()


@pytest.mark.parametrize(
    ("build", "shape"), [(tiny_vgg, (3, 8, 8)), (tiny_resnet, (3, 8, 8)), (tiny_vgg5, (1, 28, 28))]
)
def test_lipschitz_bound_exceeds_random_and_adversarial_ratios(build, shape):
    model = build()
    bound = spectral.lipschitz_upper_bound(model, shape)
    torch.manual_seed(6)
    x, x2 = torch.rand(64, *shape, dtype=torch.float64), torch.rand(64, *shape, dtype=torch.float64)
    with torch.no_grad():
        ratios = (model(x) - model(x2)).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)
    assert float(ratios.max()) <= bound
    # adversarial pairs: ascend the ratio from the point of largest local gain
    local = max(jacobian_norm(model, x_i) for x_i in x[:8])
    assert local <= bound
    a = x[:8].clone().requires_grad_(True)
    b = (x[:8] + 1e-3 * torch.randn_like(x[:8])).requires_grad_(True)
    optimizer = torch.optim.Adam([a, b], lr=1e-3)
    for _ in range(200):
        ratio = (model(a) - model(b)).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
        optimizer.zero_grad()
        (-ratio.sum()).backward()
        optimizer.step()
    assert float(ratio.max().detach()) <= bound
    assert bound < 1e4 * local  # a bound, not infinity


def test_lipschitz_bound_is_tight_for_a_linear_map():
    layer = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()
    exact = numpy_sigmas(layer[1].weight).max()
    assert spectral.lipschitz_upper_bound(layer, (3, 2, 2), iters=20) == pytest.approx(exact, rel=1e-6)


def test_lipschitz_bound_rejects_unknown_layers():
    class Square(nn.Module):
        def forward(self, x):
            return x**2

    with pytest.raises(TypeError, match="Square"):
        spectral.lipschitz_upper_bound(nn.Sequential(nn.Flatten(), Square(), nn.Linear(4, 2)), (4,))


def test_certified_accuracy_of_a_linear_model_matches_the_margin_rule():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 4)).double()
    x = torch.randn(500, 10, dtype=torch.float64)
    y = torch.randint(0, 4, (500,))
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    lip = np.linalg.svd(w, compute_uv=False).max()
    logits = x.numpy() @ w.T + b
    for eps in (0.0, 0.05, 0.2):
        margins = np.array([logits[i, y[i]] - np.delete(logits[i], y[i]).max() for i in range(500)])
        expected = np.mean(margins > math.sqrt(2) * lip * eps)
        assert spectral.certified_accuracy(model, x, y, eps, lipschitz=lip) == pytest.approx(expected)
    assert spectral.certified_accuracy(model, x, y, 0.1) <= spectral.certified_accuracy(model, x, y, 0.0)
