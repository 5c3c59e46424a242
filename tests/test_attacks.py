"""PGD attacks: constraints, effect on the loss, restarts, and no side effects."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernel_reg import attacks


def losses(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_l2_stays_in_ball_and_range_and_raises_the_loss(model, batch, random_start):
    x, y = batch
    x_adv = attacks.PGDL2(eps=0.5, steps=10, random_start=random_start)(model, x, y)
    assert torch.all((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-9)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.all(losses(model, x_adv, y) > losses(model, x, y))


def test_pgd_linf_stays_in_box_and_range_and_raises_the_loss(model, batch):
    x, y = batch
    x_adv = attacks.PGDLinf(eps=0.05, steps=10, step_size=0.01)(model, x, y)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-12
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert losses(model, x_adv, y).mean() > losses(model, x, y).mean()


def test_clip_none_lets_the_attack_leave_the_range(model, batch):
    x, y = batch
    x = x.clamp(0.2, 0.8) + 0.2  # some pixels at the top of [0, 1]
    clipped = attacks.PGDLinf(eps=0.3, steps=3, step_size=0.1, random_start=False)(model, x, y)
    free = attacks.PGDLinf(eps=0.3, steps=3, step_size=0.1, random_start=False, clip=None)(model, x, y)
    assert clipped.max() <= 1.0 and free.max() > 1.0
    assert (free - x).abs().max() <= 0.3 + 1e-12


def test_pgd_l2_follows_the_normalised_gradient(model, batch):
    x, y = batch
    x_adv = attacks.PGDL2(eps=10.0, steps=1, step_size=0.01, clip=None)(model, x, y)
    x_in = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)[0]
    expected = x + 0.01 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_adv, expected)


def test_restarts_keep_the_worst_case_of_independent_runs(model, batch):
    x, y = batch
    y = model(x).argmax(1)  # all correct, so the loss decides
    single = attacks.PGDL2(eps=0.3, steps=2, random_start=True)
    torch.manual_seed(7)
    runs = [single(model, x, y) for _ in range(3)]
    torch.manual_seed(7)
    combined = attacks.PGDL2(eps=0.3, steps=2, random_start=True, restarts=3)(model, x, y)
    run_losses = torch.stack([losses(model, r, y) for r in runs])  # (3, n)
    wrong = torch.stack([model(r).argmax(1) != y for r in runs])
    score = run_losses + 1e6 * wrong  # misclassified first, then the larger loss
    best = score.argmax(0)
    expected = torch.stack([runs[int(b)][i] for i, b in enumerate(best)])
    torch.testing.assert_close(combined, expected)


@pytest.mark.parametrize("attack", [attacks.PGDL2(), attacks.PGDLinf()])
def test_attacks_work_under_no_grad_and_leave_inputs_alone(model, batch, attack):
    x, y = batch
    x_copy, y_copy = x.clone(), y.clone()
    with torch.no_grad():
        x_adv = attack(model, x, y)
    assert not x_adv.requires_grad
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert not torch.equal(x_adv, x)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Inputs outside the clip box: clamping them would leave the eps ball, so the attacks refuse them.

EPS = {"l2": 0.5, "linf": 0.1}

# (id, build(**clip) -> attack, norm, needs images): ``clip`` is left out to get the default (0, 1)
CLIPPING_ATTACKS = [
    ("PGDL2", lambda **kw: attacks.PGDL2(eps=0.5, steps=3, **kw), "l2", False),
    ("PGDLinf", lambda **kw: attacks.PGDLinf(eps=0.1, steps=3, step_size=0.05, **kw), "linf", False),
    ("APGD-l2", lambda **kw: attacks.APGD(norm="l2", eps=0.5, steps=3, **kw), "l2", False),
    ("APGD-linf", lambda **kw: attacks.APGD(norm="linf", eps=0.1, steps=3, **kw), "linf", False),
    ("Square-l2", lambda **kw: attacks.Square(norm="l2", eps=0.5, queries=20, **kw), "l2", True),
    ("Square-linf", lambda **kw: attacks.Square(norm="linf", eps=0.1, queries=20, **kw), "linf", True),
    (
        "strong-l2",
        lambda **kw: attacks.strong(norm="l2", eps=0.5, square=True, steps=3, n_target_classes=2, queries=20, **kw),
        "l2",
        True,
    ),
    (
        "strong-linf",
        lambda **kw: attacks.strong(norm="linf", eps=0.1, steps=3, n_target_classes=2, **kw),
        "linf",
        False,
    ),
    (
        "WorstCase",
        lambda **kw: attacks.WorstCase(
            attacks=[attacks.PGDL2(eps=0.5, steps=3, **kw), attacks.Square(norm="l2", eps=0.5, queries=20, **kw)]
        ),
        "l2",
        True,
    ),
]
clipping_attacks = pytest.mark.parametrize(
    ("build", "norm", "images"), [c[1:] for c in CLIPPING_ATTACKS], ids=[c[0] for c in CLIPPING_ATTACKS]
)


def tabular_or_image_case(images, inputs=torch.randn):
    """A float64 classifier, inputs drawn by ``inputs`` and labels it gets right (so every member of a
    composed attack runs): the issue's nn.Linear(20, 5) on (8, 20) rows, or flatten + linear on images."""
    torch.manual_seed(0)
    if images:
        model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5)).double()
        x = inputs(8, 2, 4, 4, dtype=torch.float64)
    else:
        model = nn.Linear(20, 5).double()
        x = inputs(8, 20, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def distance(x_adv, x, norm):
    delta = (x_adv - x).flatten(1)
    return delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)


def test_pgd_l2_refuses_inputs_outside_the_default_clip_box():
    """The issue: on randn rows, PGDL2(eps=0.5) clamped into [0, 1] and moved points by 4.47 in l2."""
    model, x, y = tabular_or_image_case(images=False)
    with pytest.raises(ValueError, match=r"PGDL2: inputs must lie in the clip box \[0, 1\]") as error:
        attacks.PGDL2(eps=0.5, steps=3)(model, x, y)
    message = str(error.value)
    assert "clip=None" in message
    assert f"[{x.min().item():.3g}, {x.max().item():.3g}]" in message


@clipping_attacks
def test_attacks_refuse_inputs_outside_the_default_clip_box(build, norm, images):
    model, x, y = tabular_or_image_case(images)
    with pytest.raises(ValueError, match=r"inputs must lie in the clip box \[0, 1\].*clip=None"):
        build()(model, x, y)


@clipping_attacks
def test_attacks_without_clip_stay_in_the_ball_on_unbounded_inputs(build, norm, images):
    model, x, y = tabular_or_image_case(images)
    x_adv = build(clip=None)(model, x, y)
    assert torch.all(distance(x_adv, x, norm) <= EPS[norm] * (1 + 1e-6))
    assert not torch.equal(x_adv, x)


@clipping_attacks
def test_attacks_with_the_default_clip_stay_in_the_ball_and_the_box(build, norm, images):
    model, x, y = tabular_or_image_case(images, inputs=torch.rand)
    x_adv = build()(model, x, y)
    assert torch.all(distance(x_adv, x, norm) <= EPS[norm] * (1 + 1e-6))
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@clipping_attacks
def test_inputs_on_the_boundary_of_the_clip_box_are_accepted(build, norm, images):
    def zeros_and_ones(*shape, dtype):
        return torch.randint(0, 2, shape).to(dtype)

    model, x, y = tabular_or_image_case(images, inputs=zeros_and_ones)
    assert x.min() == 0 and x.max() == 1
    x_adv = build()(model, x, y)
    assert torch.all(distance(x_adv, x, norm) <= EPS[norm] * (1 + 1e-6))
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_a_custom_clip_box_is_checked_against_the_inputs():
    model, x, y = tabular_or_image_case(images=False, inputs=torch.rand)
    x = 3 * x - 1  # in [-1, 2]
    attacks.PGDLinf(eps=0.1, steps=2, clip=(-1.0, 2.0))(model, x, y)
    with pytest.raises(ValueError, match=r"PGDLinf: inputs must lie in the clip box \[-0.5, 2\]"):
        attacks.PGDLinf(eps=0.1, steps=2, clip=(-0.5, 2.0))(model, x, y)


def test_worst_case_refuses_inputs_outside_the_box_even_with_nothing_left_to_attack():
    model, x, y = tabular_or_image_case(images=False)
    y = (y + 1) % 5  # every example already misclassified: no member would run
    with pytest.raises(ValueError, match=r"APGD-CE: inputs must lie in the clip box \[0, 1\]"):
        attacks.strong(norm="l2", eps=0.5, steps=3)(model, x, y)


def test_rounding_overshoots_of_augmented_images_pass_and_real_ones_are_refused():
    """Bilinear deformation of saturated pixels gives 1 + 2^-23 in float32: that is an image in [0, 1]."""
    model, x, y = tabular_or_image_case(images=False, inputs=torch.rand)
    model, x = model.float(), x.float()
    x[0, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    attacks.PGDL2(eps=0.5, steps=2)(model, x, y)
    x[0, 0] = 1.000001
    with pytest.raises(ValueError, match=r"got values in \[.*, 1.00000\d+\]"):
        attacks.PGDL2(eps=0.5, steps=2)(model, x, y)


def test_restarts_need_a_random_start():
    assert attacks.PGDL2(eps=0.5, restarts=3).random_start  # chosen for you
    with pytest.raises(ValueError, match="restarts=3 needs random_start=True"):
        attacks.PGDL2(eps=0.5, restarts=3, random_start=False)


@pytest.mark.parametrize("clip", [(True, 2.0), 0.5, "01"])
def test_a_clip_that_is_not_a_pair_of_numbers_is_refused(clip):
    with pytest.raises(ValueError, match="clip must be None or a pair"):
        attacks.PGDL2(eps=0.5, clip=clip)


def test_robust_accuracy_of_an_empty_set_is_nan():
    from kernel_reg.app.metrics import robust_accuracy

    model = nn.Linear(4, 3)
    assert math.isnan(
        robust_accuracy(model, attacks.PGDL2(eps=0.5, clip=None), torch.zeros(0, 4), torch.zeros(0).long())
    )
