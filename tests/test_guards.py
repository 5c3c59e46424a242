"""Every penalty and attack leaves the model's mode and BatchNorm statistics as it found them,
and rejects bad arguments with a message that names the argument and the valid range."""

import pytest
import torch
from torch import nn

from kernel_reg import attacks, penalties, spectral


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.BatchNorm1d(5),
    )


CALLABLES = [
    penalties.GradientPenalty(),
    penalties.AdversarialPerturbationPenalty(steps=2),
    penalties.LossGradientPenalty(),
    penalties.LossGradientPenalty(norm="l1"),
    penalties.VATPenalty(),
    penalties.DeformationStabilityPenalty(),
    penalties.TangentGradientPenalty(),
    spectral.SpectralNormPenalty(),
    spectral.SpectralNormPenalty(method="svd"),
    attacks.PGDL2(restarts=2, random_start=True),
    attacks.PGDLinf(),
]


def state(model):
    return [m.training for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fn", CALLABLES, ids=lambda f: type(f).__name__)
def test_mode_and_batchnorm_statistics_are_unchanged(fn, training):
    model = bn_model()
    model.train()
    model(torch.rand(16, 1, 8, 8))  # non-trivial running statistics
    model.train(training)
    model[3].train(not training)  # a mixed mode must survive too
    modes, params = state(model)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 5, (8,))
    out = fn(model, x, y)
    if out.dim() == 0:
        out.backward()  # the graph stays usable after the guard restored the statistics
    new_modes, new_params = state(model)
    assert new_modes == modes
    for key, value in params.items():
        assert torch.equal(new_params[key], value), key


BAD_ARGUMENTS = [
    (lambda: penalties.AdversarialPerturbationPenalty(eps=0), "eps"),
    (lambda: penalties.AdversarialPerturbationPenalty(eps=-1.0), "eps"),
    (lambda: penalties.AdversarialPerturbationPenalty(steps=0), "steps"),
    (lambda: penalties.AdversarialPerturbationPenalty(lmbda=-1), "lmbda"),
    (lambda: penalties.GradientPenalty(lmbda=float("nan")), "lmbda"),
    (lambda: penalties.LossGradientPenalty(norm="l3"), "norm"),
    (lambda: penalties.VATPenalty(eps=0), "eps"),
    (lambda: penalties.VATPenalty(steps=0), "steps"),
    (lambda: penalties.DeformationStabilityPenalty(deformations=0), "deformations"),
    (lambda: penalties.TangentGradientPenalty(deformations=1.5), "deformations"),
    (lambda: attacks.PGDL2(eps=0), "eps"),
    (lambda: attacks.PGDL2(steps=0), "steps"),
    (lambda: attacks.PGDLinf(eps=-0.1), "eps"),
    (lambda: attacks.PGDLinf(restarts=0), "restarts"),
    (lambda: attacks.PGDLinf(clip=(1.0, 0.0)), "clip"),
    (lambda: spectral.SpectralNormPenalty(method="qr"), "method"),
    (lambda: spectral.SpectralNormPenalty(steps=0), "steps"),
    (lambda: spectral.project_(nn.Linear(2, 2), tau=0), "tau"),
    (lambda: spectral.tau_schedule(-1.0, 2.0, 0), "tau"),
]


@pytest.mark.parametrize(("build", "name"), BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_them(build, name):
    with pytest.raises(ValueError, match=rf"^{name} must be .*(>|one of|lo < hi)"):
        build()


@pytest.mark.parametrize(
    "fn", [c for c in CALLABLES if not isinstance(c, spectral.SpectralNormPenalty)], ids=lambda f: type(f).__name__
)
def test_models_without_2d_logits_are_rejected_when_called(fn):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))  # returns feature maps, not logits
    with pytest.raises(ValueError, match=r"model output must be 2-D logits"):
        fn(model, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e30])
def test_normalize_l2_gives_unit_rows_at_any_scale_and_keeps_zero_rows(scale):
    from kernel_reg._guards import normalize_l2

    torch.manual_seed(0)
    t = torch.randn(3, 1, 4, 4) * scale
    t[1] = 0
    out = normalize_l2(t)
    norms = out.flatten(1).double().norm(dim=1)
    assert torch.allclose(norms, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), atol=1e-5)
    direction = t[0].double().flatten() / t[0].double().flatten().norm()  # the direction, in float64
    assert torch.allclose(out[0].double().flatten(), direction, atol=1e-6)
