"""The shared helpers: bad arguments are rejected with a message that names the argument and the valid
range, and l2 normalisation is exact at any scale."""

import pytest
import torch
from torch import nn

from kernel_reg import attacks, penalties, spectral

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
    (lambda: attacks.APGD(norm="l3"), "norm"),
    (lambda: attacks.APGD(loss="hinge"), "loss"),
    (lambda: attacks.APGD(n_target_classes=0), "n_target_classes"),
    (lambda: attacks.Square(queries=0), "queries"),
    (lambda: attacks.Square(p_init=0), "p_init"),
    (lambda: attacks.PGD(norm="l1"), "norm"),
    (lambda: penalties.AdversarialPerturbationPenalty(candidates=0), "candidates"),
    (lambda: penalties.DeformationStabilityPenalty(chunk_size=0), "chunk_size"),
    (lambda: spectral.Projection(kappa=-1.0), "kappa"),
]


@pytest.mark.parametrize(("build", "name"), BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_them(build, name):
    with pytest.raises(ValueError, match=rf"^{name} must be .*(>|one of|lo < hi)"):
        build()


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e30])
def test_normalize_l2_gives_unit_rows_at_any_scale_and_keeps_zero_rows(scale):
    from kernel_reg.tensors import normalize_l2

    torch.manual_seed(0)
    t = torch.randn(3, 1, 4, 4) * scale
    t[1] = 0
    out = normalize_l2(t)
    norms = out.flatten(1).double().norm(dim=1)
    assert torch.allclose(norms, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), atol=1e-5)
    direction = t[0].double().flatten() / t[0].double().flatten().norm()  # the direction, in float64
    assert torch.allclose(out[0].double().flatten(), direction, atol=1e-6)
