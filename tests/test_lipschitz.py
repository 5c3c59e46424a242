"""Operator norms and Lipschitz bounds against explicit convolution matrices, numpy's SVD and empirical
Lipschitz ratios; certificates against the margin rule."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from kernel_reg import lipschitz, models

CONVS = [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, stride=2),
    dict(in_channels=3, out_channels=2, kernel_size=(3, 2), padding=0),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=2, dilation=2),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=2),
]


@pytest.mark.parametrize("config", CONVS)
def test_conv_operator_norm_is_the_top_singular_value_of_its_matrix(config, explicit_matrix):
    torch.manual_seed(1)
    conv = nn.Conv2d(**config).double()
    shape = (config["in_channels"], 6, 5)
    exact = np.linalg.svd(explicit_matrix(conv, shape), compute_uv=False).max()
    assert lipschitz.operator_norm(conv, shape, iters=5000, tol=1e-13) == pytest.approx(exact, rel=1e-5)
    upper = lipschitz.conv_operator_norm_upper_bound(conv, shape, iters=16)
    assert exact <= upper <= 1.5 * exact


@pytest.mark.parametrize("stride", [1, 2])
def test_circular_conv_bound_is_the_exact_operator_norm(stride, explicit_matrix):
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=stride, padding_mode="circular").double()
    shape = (3, 6, 8)
    exact = np.linalg.svd(explicit_matrix(conv, shape), compute_uv=False).max()
    assert lipschitz.conv_operator_norm_upper_bound(conv, shape, iters=16) == pytest.approx(exact, rel=1e-4)
    assert lipschitz.conv_operator_norm_upper_bound(conv, shape, iters=16) >= exact * (1 - 1e-12)
    with pytest.raises(ValueError, match="divisible by the stride"):
        lipschitz.conv_operator_norm_upper_bound(nn.Conv2d(3, 4, 3, padding=1, stride=2, padding_mode="circular"),
                                                 (3, 5, 8))  # fmt: skip
    with pytest.raises(ValueError, match="padding_mode 'zeros' and 'circular'"):
        lipschitz.conv_operator_norm_upper_bound(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), shape)


def test_gram_iteration_bounds_and_converges_to_sigma_max():
    torch.manual_seed(2)
    mats = torch.randn(5, 7, 4, dtype=torch.float64) * torch.tensor([1e-3, 1, 10, 1e3, 1e6]).view(5, 1, 1)
    exact = np.linalg.svd(mats.numpy(), compute_uv=False).max(1)
    for iters in (0, 2, 6):
        assert np.all(lipschitz.gram_iteration_bound(mats, iters).numpy() >= exact * (1 - 1e-12))
    np.testing.assert_allclose(lipschitz.gram_iteration_bound(mats, 16).numpy(), exact, rtol=1e-4)
    assert float(lipschitz.gram_iteration_bound(torch.zeros(3, 3), 5)) == 0.0


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


def tiny_vgg5_elu():
    torch.manual_seed(5)
    return models.vgg5_stable(num_classes=5, widths=(3, 4, 4, 6), activation="elu").double()


def jacobian_norm(model, x):
    return np.linalg.svd(jacobian(lambda z: model(z[None])[0], x).reshape(5, -1).numpy(), compute_uv=False).max()


@pytest.mark.parametrize(
    ("build", "shape"),
    [(tiny_vgg, (3, 8, 8)), (tiny_resnet, (3, 8, 8)), (tiny_vgg5, (1, 28, 28)), (tiny_vgg5_elu, (1, 28, 28))],
)
def test_lipschitz_bound_exceeds_random_and_adversarial_ratios(build, shape):
    model = build()
    bound = lipschitz.lipschitz_upper_bound(model, shape)
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
    exact = np.linalg.svd(layer[1].weight.detach().numpy(), compute_uv=False).max()
    assert lipschitz.lipschitz_upper_bound(layer, (3, 2, 2), iters=20) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.5, -1.5])
def test_the_elu_bound_is_its_largest_slope(alpha):
    """max(1, |alpha|): the supremum of |ELU'(x)| (1 above zero, alpha e^x below), approached near 0-."""
    act = nn.ELU(alpha=alpha)
    bound = lipschitz.lipschitz_upper_bound(nn.Sequential(act), (1000,))
    x = torch.linspace(-8, 8, 1000, dtype=torch.float64, requires_grad=True)
    (slopes,) = torch.autograd.grad(act(x).sum(), x)
    assert bound == max(1.0, abs(alpha))
    assert float(slopes.abs().max()) <= bound and float(slopes.abs().max()) > 0.95 * bound


def test_lipschitz_bound_rejects_unknown_layers():
    class Square(nn.Module):
        def forward(self, x):
            return x**2

    with pytest.raises(TypeError, match="Square"):
        lipschitz.lipschitz_upper_bound(nn.Sequential(nn.Flatten(), Square(), nn.Linear(4, 2)), (4,))


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
        assert lipschitz.certified_accuracy(model, x, y, eps, lipschitz=lip) == pytest.approx(expected)
    assert lipschitz.certified_accuracy(model, x, y, 0.1) <= lipschitz.certified_accuracy(model, x, y, 0.0)


def test_pairwise_bounds_hold_for_every_difference_of_two_logits():
    """K[i, j] >= ||grad (f_i - f_j)(x)|| at every x tried (a lower bound on Lip(f_i - f_j)), K <= sqrt(2) L,
    symmetric with a zero diagonal, and tighter than sqrt(2) L where the last layer's rows are not
    orthonormal (a random Linear layer)."""
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 6), nn.ReLU(), nn.Linear(6, 4)
    ).double()
    pairwise = lipschitz.pairwise_lipschitz(model, (1, 4, 4))
    bound = lipschitz.lipschitz_upper_bound(model, (1, 4, 4))
    assert pairwise.dtype == torch.float64 and torch.equal(pairwise, pairwise.T)
    assert torch.all(pairwise.diagonal() == 0) and torch.all(pairwise <= math.sqrt(2) * bound)
    assert float(pairwise.max()) < math.sqrt(2) * bound  # every pair gains here
    x = torch.randn(200, 1, 4, 4, dtype=torch.float64)
    jacobians = torch.stack([jacobian(model, x[i : i + 1]).reshape(4, 16) for i in range(200)])  # (200, 4, 16)
    for i in range(4):
        for j in range(4):
            slopes = (jacobians[:, i] - jacobians[:, j]).norm(dim=1)
            assert float(slopes.max()) <= float(pairwise[i, j]) + 1e-12


def test_pairwise_bounds_without_a_linear_head_are_the_global_rule():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 3), nn.ReLU()).double()
    pairwise = lipschitz.pairwise_lipschitz(model, (5,))
    expected = math.sqrt(2) * lipschitz.lipschitz_upper_bound(model, (5,)) * (1 - torch.eye(3, dtype=torch.float64))
    assert torch.allclose(pairwise, expected, rtol=1e-12)


def test_a_pair_of_logits_that_never_changes_is_certified_by_its_sign():
    """Two equal rows of the last layer: f_0 - f_1 = b_0 - b_1 everywhere, so K[0, 1] = 0 and class 0 is
    certified at every radius (radius +inf), class 1 at none (-inf), whatever the input."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [1.0, -2.0, 0.5]]))
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    pairwise = lipschitz.pairwise_lipschitz(model, (3,))
    assert torch.equal(pairwise, torch.zeros(2, 2, dtype=torch.float64))
    x = torch.randn(6, 3, dtype=torch.float64)
    radii = lipschitz.certified_radius(model(x), torch.tensor([0, 1, 0, 1, 0, 1]), pairwise)
    assert radii.tolist() == [math.inf, -math.inf] * 3
    assert lipschitz.certified_accuracy(model, x, torch.zeros(6, dtype=torch.long), 1e9) == 1.0


def test_the_jacobian_lower_bound_is_exact_for_a_linear_map_and_below_the_bound_elsewhere():
    torch.manual_seed(4)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double()
    x = torch.rand(3, 3, 2, 2, dtype=torch.float64)
    exact = np.linalg.svd(linear[1].weight.detach().numpy(), compute_uv=False).max()
    assert lipschitz.lipschitz_lower_bound(linear, x, steps=100) == pytest.approx(exact, rel=1e-4)
    model = models.lipnet(width=4).double()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    lower = lipschitz.lipschitz_lower_bound(model, x, steps=20)
    assert 0 < lower <= lipschitz.lipschitz_upper_bound(model, (1, 28, 28))


def test_the_lipschitz_margin_raises_the_other_logits_by_the_certified_amount():
    from kernel_reg.lipschitz import LipschitzMargin

    torch.manual_seed(5)
    model = models.lipnet(width=4).double()
    margin = LipschitzMargin(eps=0.5, input_shape=(1, 28, 28), steps=1000)
    logits, y = torch.zeros(3, 10, dtype=torch.float64), torch.tensor([0, 3, 9])
    estimate = float(margin.lipschitz(model).detach())  # 1000 power-iteration steps: converged
    bound = lipschitz.lipschitz_upper_bound(model, (1, 28, 28))
    assert estimate <= bound * (1 + 1e-9) and estimate >= 0.9 * bound  # converged estimates, from below
    shifted = margin(model, logits, y)  # 1000 more steps: the same L to 1e-3
    expected = math.sqrt(2) * 0.5 * estimate
    assert torch.allclose(shifted.gather(1, y[:, None]), torch.zeros(3, 1, dtype=torch.float64))
    others = shifted.scatter(1, y[:, None], float("nan"))
    assert torch.allclose(others[~others.isnan()], torch.full((27,), expected, dtype=torch.float64), rtol=1e-3)
    shifted.sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # the margin pushes L down too
    held = LipschitzMargin(eps=0.5, input_shape=(1, 28, 28), through_bound=False)(model, logits, y)
    assert not held.requires_grad  # L held constant: no gradient reaches the weights through it


def test_the_pairwise_margin_raises_each_logit_by_its_pair_constant():
    """Converged power iteration: logit j of an example of class y rises by eps K[y, j], K the guaranteed
    pairwise bounds of lipschitz.pairwise_lipschitz (to 1e-3), the label's logit not at all; a finite
    gradient reaches the weights through K only when it is not held."""
    from kernel_reg.lipschitz import LipschitzMargin

    torch.manual_seed(10)
    model = models.lipnet(width=4).double()
    logits, y = torch.zeros(4, 10, dtype=torch.float64), torch.tensor([0, 3, 3, 9])
    margin = LipschitzMargin(eps=0.5, input_shape=(1, 28, 28), steps=1000, pairwise=True)
    shifted = margin(model, logits, y)
    pairwise = lipschitz.pairwise_lipschitz(model, (1, 28, 28))
    assert torch.allclose(shifted, 0.5 * pairwise[y], rtol=1e-3, atol=1e-12)
    assert torch.all(shifted.gather(1, y[:, None]) == 0)
    assert bool((pairwise < math.sqrt(2) * lipschitz.lipschitz_upper_bound(model, (1, 28, 28)) - 1e-6).any())
    LipschitzMargin(eps=0.5, input_shape=(1, 28, 28), pairwise=True)(model, logits, y).sum().backward()
    head, first = model[-1].weight.grad, model[1].weight.grad  # model[0] normalizes the input
    assert torch.isfinite(head).all() and head.abs().sum() > 0 and first.abs().sum() > 0
    held = LipschitzMargin(eps=0.5, input_shape=(1, 28, 28), through_bound=False, pairwise=True)
    assert not held(model, logits, y).requires_grad


def test_the_pairwise_margin_refuses_a_model_without_a_linear_head():
    from kernel_reg.lipschitz import LipschitzMargin

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU())
    margin = LipschitzMargin(eps=0.5, input_shape=(4,), pairwise=True)
    with pytest.raises(ValueError, match="ending with a Linear layer.*ends with ReLU"):
        margin(model, torch.zeros(2, 3), torch.tensor([0, 1]))


def test_the_lipschitz_margin_records_the_input_shapes_once_per_model():
    """The layers' input shapes cost a forward pass: one for the first call on a model, none after, and a
    model with other layers (here other shapes) is recorded anew, giving its own L."""
    from kernel_reg.lipschitz import LipschitzMargin

    torch.manual_seed(6)
    margin = LipschitzMargin(eps=0.5, input_shape=(1, 28, 28), steps=200, through_bound=False)
    logits, y = torch.zeros(2, 10, dtype=torch.float64), torch.tensor([1, 2])
    forwards = []
    for width in (4, 8):
        model = models.lipnet(width=width).double()
        model.register_forward_pre_hook(lambda module, args: forwards.append(width))
        for _ in range(3):
            shifted = margin(model, logits, y)
        bound = lipschitz.lipschitz_upper_bound(model, (1, 28, 28))
        assert float(shifted[0, 0]) / (math.sqrt(2) * 0.5) == pytest.approx(bound, rel=1e-3)
    assert forwards == [4, 4, 8, 8]  # per model: the margin's first call, then lipschitz_upper_bound's own
