"""The contract every public penalty and attack keeps, checked on each one: the model's mode and BatchNorm
statistics and the caller's tensors are left alone, float64 stays float64, nothing turns NaN on zero
inputs or a constant model, penalties work under torch.no_grad(), bad models and inputs get clear errors,
constructors are keyword-only and repr shows the hyperparameters, and seeded attacks repeat exactly.
The penalties and adversarial trainings come from the registry, so a new regularizer is checked too."""

import copy
import math

import pytest
import torch
from torch import nn

from kernel_reg import attacks, lipschitz, penalties, spectral
from kernel_reg.app import regularizers
from kernel_reg.app.regularizers import REGISTRY

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
CHEAP = {"steps": 2, "deformations": 2}


def registry_built(kind):
    """Every regularizer of ``kind`` in the registry, built with cheap inner loops."""
    built = {}
    for name, entry in REGISTRY.items():
        if entry.kind == kind:
            params = {**entry.defaults(), **{k: v for k, v in CHEAP.items() if k in entry.defaults()}}
            built[name] = regularizers.build(name, params)
    return built


def make_penalties():
    made = registry_built("penalty")
    made["stability, first examples"] = regularizers.build(
        "stability", {**REGISTRY["stability"].defaults(), "deformations": 2, "examples_per_batch": 3}
    )
    made["adv-perturbation, candidates"] = penalties.AdversarialPerturbationPenalty(eps=0.5, steps=2, candidates=2)
    fd = {"method": "finite-difference"}
    made["loss-gradl2, finite differences"] = penalties.LossGradientPenalty(**fd)
    made["gradient-penalty, finite differences"] = penalties.GradientPenalty(**fd)
    made["gradtangent, finite differences"] = penalties.TangentGradientPenalty(deformations=2, **fd)
    made["spectral, operator norm"] = spectral.SpectralNormPenalty(norm="operator")
    return made


def make_attacks(generator=None):
    made = registry_built("attack")
    g = {"generator": generator}
    made.update({
        "pgd-l2 restarts": attacks.PGD(norm="l2", eps=0.5, steps=2, random_start=True, restarts=2, **g),
        "apgd-ce": attacks.APGD(norm="l2", eps=0.5, steps=3, **g),
        "apgd-t": attacks.APGD(norm="linf", eps=0.05, loss="dlr", targeted=True, n_target_classes=2, steps=3, **g),
        "square-l2": attacks.Square(norm="l2", eps=0.5, queries=10, **g),
        "square-linf": attacks.Square(norm="linf", eps=0.05, queries=10, **g),
        "worst-case": attacks.WorstCase(attacks=[attacks.PGDL2(eps=0.5, steps=2, **g),
                                                 attacks.Square(norm="l2", eps=0.5, queries=5, **g)]),
        "strong": attacks.strong(norm="l2", eps=0.5, steps=2, n_target_classes=2, **g),
    })  # fmt: skip
    return made


PENALTIES, ATTACKS = make_penalties(), make_attacks()
ALL = {**PENALTIES, **ATTACKS}


def bn_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.1), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5),
    ).to(dtype)  # fmt: skip
    model.train()
    model(torch.rand(16, 1, 8, 8, dtype=dtype))  # non-trivial running statistics
    return model


def batch(dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 8, 8, generator=generator, dtype=dtype)
    return x.to(device), torch.randint(0, 5, (8,), generator=generator).to(device)


def call(fn, model, x, y):
    return fn(model, x, y)


def snapshot(model):
    return [m.training for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", list(ALL))
def test_the_model_and_the_inputs_are_left_as_they_were(name, training, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = bn_model().to(device)
    model.train(training)
    model[3].train(not training)  # a mixed mode must survive too
    modes, state = snapshot(model)
    x, y = batch(device=device)
    x_before, y_before = x.clone(), y.clone()
    out = call(ALL[name], model, x, y)
    if name in PENALTIES:
        assert out.dim() == 0 and out.device.type == device
        out.backward()  # the graph stays usable after the guard restored the statistics
    else:
        assert out.shape == x.shape and out.device.type == device and not out.requires_grad
    new_modes, new_state = snapshot(model)
    assert new_modes == modes
    assert all(torch.equal(new_state[k], v) for k, v in state.items())
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


@pytest.mark.parametrize("name", list(ALL))
def test_float64_stays_float64(name):
    model, (x, y) = bn_model(torch.float64).eval(), batch(torch.float64)
    out = call(ALL[name], model, x, y)
    assert out.dtype == torch.float64


@pytest.mark.parametrize("case", ["zero inputs", "constant model"])
@pytest.mark.parametrize("name", list(ALL))
def test_no_nan_on_zero_inputs_or_a_constant_model(name, case):
    model, (x, y) = bn_model().eval(), batch()
    if case == "zero inputs":
        x = torch.zeros_like(x)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()  # the logits no longer depend on x: every input gradient is zero
    out = call(ALL[name], model, x, y)
    assert torch.isfinite(out).all()
    if name in PENALTIES:
        out.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list(PENALTIES))
def test_penalties_work_under_no_grad(name):
    model, (x, y) = bn_model().eval(), batch()
    torch.manual_seed(3)
    expected = call(PENALTIES[name], model, x, y).detach()
    with torch.no_grad():
        torch.manual_seed(3)
        value = call(PENALTIES[name], model, x, y)
    assert value.requires_grad and torch.allclose(value.detach(), expected)
    value.backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(PENALTIES))
def test_the_callers_logits_change_the_cost_only(name, device):
    """penalty(model, x, y, logits=model(x)) is penalty(model, x, y), its gradients included, and leaves the
    statistics of the caller's training-mode forward pass as they were."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, (x, y) = bn_model(torch.float64).to(device).eval(), batch(torch.float64, device)
    fresh = copy.deepcopy(PENALTIES[name])  # the same power-iteration vectors for both calls
    model[3].p = 0.0  # no dropout noise between the two calls
    torch.manual_seed(3)
    alone = call(copy.deepcopy(fresh), model, x, y)
    want = torch.autograd.grad(alone, list(model.parameters()), allow_unused=True, materialize_grads=True)
    x_in = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    shared = fresh(model, x_in, y, logits=model(x_in))
    got = torch.autograd.grad(shared, list(model.parameters()), allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(shared, alone, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)
    logits = model.train()(x_in)  # the training pass updates the statistics; the penalty must not
    modes, state = snapshot(model)
    PENALTIES[name](model, x_in, y, logits=logits).backward()
    new_modes, new_state = snapshot(model)
    assert new_modes == modes and all(torch.equal(new_state[k], v) for k, v in state.items())
    assert torch.equal(x_in.detach(), x)


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = bn_model().eval()

    def forward(self, x):
        return self.inner(x), {"features": x}


@pytest.mark.parametrize("name", [n for n in ALL if not isinstance(ALL[n], spectral.SpectralNormPenalty)])
def test_a_model_that_returns_a_tuple_gets_a_clear_error(name):
    x, y = batch()
    with pytest.raises(
        ValueError, match=r"must return a tensor of logits of shape \(batch=\d+, classes\), it returned a tuple"
    ):
        call(ALL[name], TupleModel(), x, y)


@pytest.mark.parametrize("name", [n for n in ALL if not isinstance(ALL[n], spectral.SpectralNormPenalty)])
def test_a_model_without_2d_logits_gets_a_clear_error(name):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))  # returns feature maps, not logits
    with pytest.raises(ValueError, match=r"model output must be 2-D logits"):
        call(ALL[name], model, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("name", ["stability", "gradtangent"])
def test_deformation_penalties_say_they_need_images(name):
    model = nn.Sequential(nn.Linear(20, 5))
    with pytest.raises(ValueError, match=r"deforms images: x must be a batch \(n, C, H, W\), got shape \(8, 20\)"):
        PENALTIES[name](model, torch.rand(8, 20), torch.zeros(8, dtype=torch.long))


def test_the_spectral_penalty_names_a_model_without_layers():
    with pytest.raises(ValueError, match="Sequential has no layer the spectral-norm penalty acts on"):
        spectral.SpectralNormPenalty()(nn.Sequential(nn.Flatten(), nn.ReLU()))


def test_a_model_without_parameters_has_its_lipschitz_bound():
    # 2 x 2 average pooling with stride 2 averages disjoint windows of four: its norm is 1/2
    assert lipschitz.lipschitz_upper_bound(nn.Sequential(nn.AvgPool2d(2)), (1, 4, 4)) == pytest.approx(0.5)
    assert lipschitz.lipschitz_upper_bound(nn.Sequential(nn.ReLU(), nn.Flatten()), (3, 2, 2)) == 1.0


@pytest.mark.parametrize("name", list(ALL))
def test_constructors_are_keyword_only_and_repr_shows_the_hyperparameters(name):
    obj = ALL[name]
    inner = obj.penalty if isinstance(obj, penalties.FirstExamples) else obj
    text = repr(inner)
    assert text.startswith(type(inner).__name__ + "(") and "object at" not in text
    for key in ("lmbda", "eps", "steps"):
        if hasattr(inner, key) and not isinstance(inner, attacks.WorstCase):
            assert f"{key}={getattr(inner, key)!r}" in text
    assert isinstance(obj.name, str) and obj.name
    if hasattr(type(inner).__init__, "__wrapped__"):  # 0.1 took positions: read, with a warning, until 0.3
        with pytest.warns(DeprecationWarning, match="takes keyword arguments only"):
            type(inner)(1.0)
    else:
        with pytest.raises(TypeError, match="positional argument"):
            type(inner)(1.0)


def test_repr_of_pgd_reads_like_its_constructor():
    pgd = attacks.PGDL2(eps=1.0, steps=5, step_size=0.25)
    assert repr(pgd) == "PGDL2(eps=1.0, steps=5, step_size=0.25, random_start=False, restarts=1, clip=(0.0, 1.0))"
    assert repr(penalties.GradientPenalty(lmbda=0.5)) == "GradientPenalty(lmbda=0.5, method='exact', h=1.0)"


@pytest.mark.parametrize("name", ["pgd-l2 restarts", "apgd-ce", "apgd-t", "square-l2", "square-linf", "strong"])
def test_a_seeded_attack_repeats_exactly_and_leaves_the_global_rng_alone(name):
    model, (x, y) = bn_model().eval(), batch()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        before = torch.get_rng_state()
        attack = make_attacks(torch.Generator().manual_seed(7))[name]
        runs.append(attack(model, x, y))
        assert torch.equal(torch.get_rng_state(), before)  # the attack drew from its own generator
    assert torch.equal(runs[0], runs[1])


@pytest.mark.cuda
def test_a_tiny_training_run_on_a_gpu(tmp_path, tiny):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from kernel_reg.app.training import train

    config = tiny(tmp_path, device="cuda", regs=("gradient-penalty", "pgd-l2", "penalize-sn-pi"))
    metrics = train(config, log=lambda _: None)
    assert [m.epoch for m in metrics] == [0, 1] and all(math.isfinite(m.train_loss) for m in metrics)
