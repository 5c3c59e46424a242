"""PGD attacks: constraints, effect on the loss, restarts, and no side effects."""

import pytest
import torch
import torch.nn.functional as F

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
