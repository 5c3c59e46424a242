"""Each penalty against its definition, computed by brute force one example and one class at a time."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from kernel_reg import penalties
from kernel_reg.deformations import RandomDeformation, deform, tangent


def example_jacobian(model, x_i, create_graph=False):
    """(k, *shape): d f(x_i) / d x_i for one example."""
    return jacobian(lambda z: model(z.unsqueeze(0)).squeeze(0), x_i, create_graph=create_graph)


def param_grads(model, value):
    return torch.autograd.grad(
        value, list(model.parameters()), retain_graph=True, allow_unused=True, materialize_grads=True
    )


def assert_same_grads(model, value, reference):
    for got, want in zip(param_grads(model, value), param_grads(model, reference)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


def brute_gradient_penalty(model, x, lmbda):
    per_example = [example_jacobian(model, x_i, create_graph=True).flatten(1).pow(2).sum(1) for x_i in x]
    norms = torch.stack(per_example)  # (n, k)
    return lmbda * norms.max(0).values.sum()


def test_gradient_penalty_matches_brute_force(model, batch):
    x, y = batch
    value = penalties.GradientPenalty(lmbda=0.3)(model, x, y)
    reference = brute_gradient_penalty(model, x, 0.3)
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=0)
    assert_same_grads(model, value, reference)


def brute_adversarial_perturbation(model, x, eps, steps, step_size, lmbda):
    k = model(x[:1]).shape[1]
    best = []
    for j in range(k):
        increases, finals = [], []
        for x_i in x:
            d = torch.zeros_like(x_i)
            for _ in range(steps):
                g = example_jacobian(model, x_i + d)[j]
                d = d + step_size * g / g.norm()
                d = d * min(1.0, eps / float(d.norm()))
            finals.append(d)
            with torch.no_grad():
                increases.append(model((x_i + d)[None])[0, j] - model(x_i[None])[0, j])
        i = int(torch.stack(increases).argmax())
        best.append(model((x[i] + finals[i])[None])[0, j] - model(x[i][None])[0, j])
    return lmbda * torch.stack(best).pow(2).sum()


@pytest.mark.parametrize("chunk_size", [None, 12, 1000])
def test_adversarial_perturbation_penalty_matches_brute_force(model, batch, chunk_size):
    x, y = batch
    penalty = penalties.AdversarialPerturbationPenalty(eps=0.7, steps=3, lmbda=2.0, chunk_size=chunk_size)
    value = penalty(model, x, y)
    reference = brute_adversarial_perturbation(model, x, 0.7, 3, 1.5 * 0.7 / 3, 2.0)
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=0)
    assert_same_grads(model, value, reference)


@pytest.mark.parametrize("shared", [False, True], ids=["own forward", "caller's logits"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_loss_gradient_penalty_matches_brute_force(model, batch, norm, shared):
    x, y = batch
    penalty = penalties.LossGradientPenalty(lmbda=0.5, norm=norm)
    if shared:
        x_in = x.clone().requires_grad_(True)
        value = penalty(model, x_in, y, logits=model(x_in))
    else:
        value = penalty(model, x, y)
    terms = []
    for x_i, y_i in zip(x, y):
        g = jacobian(lambda z: F.cross_entropy(model(z[None]), y_i[None]), x_i, create_graph=True)
        terms.append(g.pow(2).sum() if norm == "l2" else g.abs().sum())
    reference = 0.5 * torch.stack(terms).mean()
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=0)
    assert_same_grads(model, value, reference)


def test_vat_penalty_matches_brute_force(model, batch):
    x, y = batch
    lmbda, eps, xi = 0.8, 0.5, 1e-6
    torch.manual_seed(5)
    value = penalties.VATPenalty(lmbda=lmbda, eps=eps, xi=xi, steps=2)(model, x, y)
    torch.manual_seed(5)
    start = torch.randn_like(x)
    terms = []
    for x_i, d in zip(x, start):
        p = F.softmax(model(x_i[None]), 1).detach()

        def kl(r):
            log_q = F.log_softmax(model((x_i + r)[None]), 1)
            return (p * (p.log() - log_q)).sum()

        for _ in range(2):
            d = jacobian(kl, xi * d / d.norm())
        terms.append(kl(eps * d / d.norm()))
    reference = lmbda * torch.stack(terms).mean()
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=0)
    assert_same_grads(model, value, reference)


def test_deformation_stability_penalty_matches_brute_force(model, batch):
    x, y = batch
    m, sampler = 3, RandomDeformation(amplitude=1.5, affine=0.1)
    torch.manual_seed(3)
    value = penalties.DeformationStabilityPenalty(lmbda=0.7, deformations=m, sampler=sampler)(model, x, y)
    torch.manual_seed(3)
    fields = sampler.sample(len(x) * m, 6, 6, device=x.device, dtype=x.dtype).view(len(x), m, 6, 6, 2)
    k = model(x[:1]).shape[1]
    terms = []
    for j in range(k):
        pairs = [(i, r) for i in range(len(x)) for r in range(m)]
        changes = [
            model(deform(x[i : i + 1], fields[i, r : r + 1]))[0, j] - model(x[i : i + 1])[0, j] for i, r in pairs
        ]
        terms.append(torch.stack(changes).pow(2).max())
    reference = 0.7 * torch.stack(terms).sum()
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=0)
    assert_same_grads(model, value, reference)


def test_tangent_gradient_penalty_matches_brute_force(model, batch):
    x, y = batch
    m, sampler = 3, RandomDeformation()
    torch.manual_seed(4)
    value = penalties.TangentGradientPenalty(lmbda=0.2, deformations=m, sampler=sampler)(model, x, y)
    torch.manual_seed(4)
    fields = sampler.sample(len(x) * m, 6, 6, device=x.device, dtype=x.dtype).view(len(x), m, 6, 6, 2)
    tangents = tangent(x, fields)  # (n, m, C, H, W)
    scores = []
    for i, x_i in enumerate(x):
        jac = example_jacobian(model, x_i, create_graph=True).flatten(1)  # (k, D)
        scores.append((jac @ tangents[i].flatten(1).T).pow(2).sum(1))  # (k,)
    reference = 0.2 * torch.stack(scores).max(0).values.sum()
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=0)
    assert_same_grads(model, value, reference)


def test_class_input_gradients_are_the_jacobian(model, batch):
    x, _ = batch
    logits, grads = penalties.class_input_gradients(model, x)
    torch.testing.assert_close(logits, model(x))
    for i, x_i in enumerate(x):
        torch.testing.assert_close(grads[i], example_jacobian(model, x_i))


def test_penalties_leave_inputs_untouched(model, batch):
    x, y = batch
    x_copy, y_copy = x.clone(), y.clone()
    for penalty in (
        penalties.GradientPenalty(),
        penalties.AdversarialPerturbationPenalty(),
        penalties.LossGradientPenalty(),
        penalties.VATPenalty(),
        penalties.DeformationStabilityPenalty(),
        penalties.TangentGradientPenalty(),
    ):
        penalty(model, x, y).backward()
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
        assert x.grad is None


def test_candidate_preselection_is_exact_with_enough_candidates_and_a_lower_bound_otherwise(model, batch):
    x, y = batch
    exact = penalties.AdversarialPerturbationPenalty(eps=0.7, steps=3)(model, x, y).detach()
    assert torch.equal(
        penalties.AdversarialPerturbationPenalty(eps=0.7, steps=3, candidates=len(x))(model, x, y).detach(), exact
    )
    for m in (1, 2, 4):
        fewer = penalties.AdversarialPerturbationPenalty(eps=0.7, steps=3, candidates=m)(model, x, y).detach()
        assert float(fewer) <= float(exact) * (1 + 1e-12)  # a maximum over fewer (identical) ascents
    sampler = RandomDeformation(amplitude=1.5)

    def stability(candidates):
        torch.manual_seed(9)
        penalty = penalties.DeformationStabilityPenalty(
            lmbda=1.0, deformations=3, sampler=sampler, candidates=candidates
        )
        return penalty(model, x, y).detach()

    assert torch.equal(stability(len(x)), stability(None))
    assert float(stability(1)) <= float(stability(None)) * (1 + 1e-12)


def _parameter_gradient(penalty, model, x, y, seed=7):
    model.zero_grad()
    torch.manual_seed(seed)  # the same deformations for both methods
    value = penalty(model, x, y)
    value.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]  # biases: none
    return value.detach(), torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize(
    "make",
    [
        lambda method: penalties.LossGradientPenalty(lmbda=0.7, method=method, h=1e-4),
        lambda method: penalties.GradientPenalty(lmbda=0.7, method=method, h=1e-4),
        lambda method: penalties.TangentGradientPenalty(lmbda=0.7, deformations=3, method=method, h=1e-4),
    ],
    ids=["loss-gradl2", "gradient-penalty", "gradtangent"],
)
def test_finite_differences_give_the_exact_value_and_nearly_the_exact_gradient(model, batch, make):
    x, y = batch
    exact_value, exact_grad = _parameter_gradient(make("exact"), model, x, y)
    fd_value, fd_grad = _parameter_gradient(make("finite-difference"), model, x, y)
    assert torch.allclose(fd_value, exact_value, rtol=1e-10)  # the value itself is exact
    cosine = torch.nn.functional.cosine_similarity(exact_grad, fd_grad, dim=0)
    assert cosine > 0.9999 and torch.allclose(fd_grad.norm(), exact_grad.norm(), rtol=1e-3)


def test_the_finite_difference_from_the_callers_logits_is_the_one_of_its_own_forward_pass(model, batch):
    x, y = batch
    penalty = penalties.LossGradientPenalty(lmbda=0.7, method="finite-difference", h=0.3)
    own = penalty(model, x, y)
    x_in = x.clone().requires_grad_(True)
    logits = model(x_in)
    shared = penalty(model, x_in, y, logits=logits)
    torch.testing.assert_close(shared, own, rtol=1e-12, atol=0)
    assert_same_grads(model, shared, own)
    assert x_in.grad is None  # the input gradient was taken, not accumulated


def test_logits_without_a_graph_to_the_inputs_are_refused(model, batch):
    x, y = batch
    penalty = penalties.LossGradientPenalty()
    with pytest.raises(ValueError, match=r"loss-gradl2: the logits must come from model\(x\) with x.requires_grad"):
        penalty(model, x, y, logits=model(x))
    x_in = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"2-D logits of shape \(batch=6, classes\), got shape \(3, 5\)"):
        penalty(model, x_in, y, logits=model(x_in)[:3])
    with torch.no_grad():
        detached = model(x_in)
    with pytest.raises(ValueError, match=r"logits.requires_grad=False"):
        penalty(model, x_in, y, logits=detached)
    with pytest.raises(ValueError, match="the logits given do not depend on x"):
        penalty(model, x_in, y, logits=model(x.clone().requires_grad_(True)))


def test_the_finite_difference_step_trades_bias_for_nothing_below_a_point(model, batch):
    """Larger steps drift from the exact gradient: the cosine falls monotonically as h grows."""
    x, y = batch
    _, exact = _parameter_gradient(penalties.LossGradientPenalty(lmbda=1.0), model, x, y)
    cosines = []
    for h in (1e-4, 1e-1, 1.0):
        _, fd = _parameter_gradient(
            penalties.LossGradientPenalty(lmbda=1.0, method="finite-difference", h=h), model, x, y
        )
        cosines.append(float(torch.nn.functional.cosine_similarity(exact, fd, dim=0)))
    assert cosines[0] > cosines[1] > cosines[2]
    with pytest.raises(ValueError, match="approximates the squared l2 norm: use norm='l2'"):
        penalties.LossGradientPenalty(norm="l1", method="finite-difference")
