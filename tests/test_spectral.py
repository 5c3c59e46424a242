"""The spectral constraint and penalty against numpy's SVD."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kernel_reg import lipschitz, models, spectral


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
    assert spectral.tau_schedule(1.5, 0.0, 0) == 1.5  # kappa 0: the final radius from the start


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


OPERATOR_LAYERS = [
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 6, 5)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, stride=2), (2, 6, 6)),
    (lambda: nn.Conv2d(2, 4, 3, padding=2, dilation=2), (2, 5, 5)),
    (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2), (4, 5, 4)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 6, 5)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, stride=2, padding_mode="circular"), (2, 6, 6)),
    (lambda: nn.Linear(12, 7), (12,)),
]


@pytest.mark.parametrize(("make", "shape"), OPERATOR_LAYERS)
def test_operator_projection_bounds_the_exact_operator_norm(make, shape, explicit_matrix):
    torch.manual_seed(0)
    layer = make().double()
    with torch.no_grad():
        layer.weight.mul_(3.0)  # well above the radius
    exact_before = np.linalg.svd(explicit_matrix(layer, shape), compute_uv=False).max()
    assert exact_before > 1.2
    spectral.project_(layer, 1.0, norm="operator", input_shape=shape)
    exact = np.linalg.svd(explicit_matrix(layer, shape), compute_uv=False).max()
    assert exact <= 1.0 + 1e-9
    assert exact >= 0.7  # rescaled to the bound, not crushed
    spectral.project_(layer, 1.0, norm="operator", input_shape=shape)  # already inside: unchanged
    assert np.linalg.svd(explicit_matrix(layer, shape), compute_uv=False).max() == pytest.approx(exact)


@pytest.mark.parametrize(("make", "shape"), OPERATOR_LAYERS)
def test_operator_norm_estimates_converge_from_below(make, shape, explicit_matrix):
    torch.manual_seed(1)
    layer = nn.Sequential(make()).double()
    exact = np.linalg.svd(explicit_matrix(layer, shape), compute_uv=False).max()
    norms = spectral.OperatorNorms()
    shapes = lipschitz.input_shapes(layer, shape)
    few = float(norms.estimates(layer, shapes, 2)["0"].detach())
    many = float(norms.estimates(layer, shapes, 1000)["0"].detach())  # continues from the kept vector
    assert few <= exact + 1e-9 and many <= exact + 1e-9
    assert many == pytest.approx(exact, rel=1e-3)
    again = spectral.OperatorNorms()
    again.load_state_dict(norms.state_dict())  # the vectors travel in a checkpoint
    assert float(again.estimates(layer, shapes, 0)["0"].detach()) == pytest.approx(many)


def test_operator_projection_in_training_guarantees_the_radius_at_the_end_of_each_epoch():
    torch.manual_seed(2)
    model = models.lipnet(width=4).double()
    projection = spectral.Projection(tau=1.0, kappa=1e-6, norm="operator", input_shape=(1, 28, 28), steps=2)
    shapes = lipschitz.input_shapes(model, (1, 28, 28))
    for _ in range(5):
        projection(model, epoch=10)  # the cheap per-step rescaling by the estimates
    estimates = projection.operators.estimates(model, shapes, 0)
    assert max(float(s.detach()) for s in estimates.values()) <= 1.0 + 1e-9
    projection.finish_epoch(model, epoch=10)
    for _, layer in spectral.spectral_layers(model):
        assert lipschitz.layer_upper_bound(layer, shapes[layer]) <= 1.0 + 1e-9
    depth = len(spectral.spectral_layers(model))
    assert lipschitz.lipschitz_upper_bound(model, (1, 28, 28)) <= 1.0**depth + 1e-9  # MaxMin, unshuffle: 1


def test_operator_norm_penalty_is_the_sum_of_squared_operator_norms(explicit_matrix):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3)).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    penalty = spectral.SpectralNormPenalty(lmbda=0.5, norm="operator", steps=300)
    value = penalty(model, x)
    conv = np.linalg.svd(explicit_matrix(model[0], (1, 4, 4)), compute_uv=False).max()
    linear = np.linalg.svd(model[3].weight.detach().numpy(), compute_uv=False).max()
    assert float(value.detach()) == pytest.approx(0.5 * (conv**2 + linear**2), rel=1e-4)
    value.backward()
    assert model[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the inputs x"):
        penalty(model)
    with pytest.raises(ValueError, match="use method='power'"):
        spectral.SpectralNormPenalty(method="svd", norm="operator")


@pytest.mark.parametrize(("make", "shape"), OPERATOR_LAYERS)
def test_normalization_divides_each_layer_by_its_exact_operator_norm(make, shape, explicit_matrix):
    torch.manual_seed(3)
    layer = nn.Sequential(make()).double()
    with torch.no_grad():
        layer[0].weight.mul_(5.0)
    cold = lipschitz.normalize_(nn.Sequential(make()).double(), shape, warmup=0)
    exact_cold = np.linalg.svd(explicit_matrix(cold, shape), compute_uv=False).max()
    assert exact_cold >= 1.0 - 1e-9  # ||A v|| <= sigma_max whatever v: never below 1
    lipschitz.normalize_(layer, shape, warmup=2000)
    exact = np.linalg.svd(explicit_matrix(layer, shape), compute_uv=False).max()
    assert 1.0 - 1e-9 <= exact <= 1.0 + 1e-4  # v converged: W_eff = W / sigma_max(A_W)
    with pytest.raises(ValueError, match="already parametrized"):
        lipschitz.normalize_(layer, shape)


def small_lipnet(seed: int) -> nn.Sequential:
    """``models.lipnet`` at width 2 for 1x8x8 inputs (unshuffles 8 -> 4 -> 2), its weights normalized."""
    torch.manual_seed(seed)
    body = list(models.lipnet(width=2))[:-1]
    return lipschitz.normalize_(nn.Sequential(*body, nn.Linear(8 * 4, 3, bias=False)).double(), (1, 8, 8))


def test_normalization_follows_the_weights_and_round_trips_through_a_state_dict(explicit_matrix):
    model = small_lipnet(4)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    model.train()
    train_out = model(x)
    assert torch.equal(model(x), train_out)  # reading the weights does not move the vectors
    model.eval()
    assert torch.equal(model(x), train_out)  # the same function in train and eval mode
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):  # large steps: the power iteration has to follow
        optimizer.zero_grad()
        model(x).square().sum().neg().backward()
        optimizer.step()
        lipschitz.renormalize_(model)
    shapes = lipschitz.input_shapes(model, (1, 8, 8))

    def exact_norms():
        return [
            np.linalg.svd(explicit_matrix(m, shapes[m]), compute_uv=False).max()
            for _, m in spectral.spectral_layers(model)
        ]

    assert min(exact_norms()) >= 1.0 - 1e-9  # one step per update lags, from above
    lipschitz.renormalize_(model, steps=2000)  # as training does at the end of each epoch
    np.testing.assert_allclose(exact_norms(), 1.0, rtol=1e-4)
    twin = small_lipnet(5)  # other weights and vectors
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.eval()(x), model(x))
