"""Names and arguments that moved in 0.2 keep working until 0.3, each use with a DeprecationWarning that
names the new place (CHANGELOG.md, "Deprecation policy")."""

import importlib

import pytest
import torch
from torch import nn

from kernel_reg import attacks, penalties, spectral

MOVED = [
    ("kernel_reg.spectral", name, "kernel_reg.lipschitz")
    for name in (
        "LipschitzBounded", "certified_accuracy", "certified_radius", "conv_operator_norm_upper_bound",
        "gram_iteration_bound", "lipschitz_upper_bound", "operator_norm", "OperatorNormalization", "normalize_",
        "renormalize_", "orthogonalize_",
    )
] + [
    ("kernel_reg.attacks", "margin", "kernel_reg.tensors"),
    ("kernel_reg.app.report", "Selection", "kernel_reg.app.studies"),
    ("kernel_reg.app.report", "Study", "kernel_reg.app.studies"),
    ("kernel_reg.app.report", "method_colour", "kernel_reg.app.plots"),
] + [
    ("kernel_reg.app.rundir", name, "kernel_reg.app.builders")
    for name in ("LoadedRun", "build_model", "load_run", "load_splits", "load_weights", "resolve_device")
]  # fmt: skip


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_imports_from_its_old_place_with_a_warning_naming_the_new_one(old, name, new):
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}.*goes in kernel-reg 0\.3"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)
    with pytest.warns(DeprecationWarning):
        exec(f"from {old} import {name}", {})


def test_a_name_that_never_existed_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'kernel_reg.spectral' has no attribute 'no_such_name'"):
        spectral.no_such_name  # noqa: B018


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def test_spectral_norm_penalty_takes_its_old_iters_and_positions():
    model = _model()
    with pytest.warns(DeprecationWarning, match=r"SpectralNormPenalty\(iters=...\) is now SpectralNormPenalty\(steps"):
        renamed = spectral.SpectralNormPenalty(lmbda=0.5, iters=7)
    with pytest.warns(DeprecationWarning, match=r"keyword arguments only: pass lmbda=, method=, iters= by name"):
        positional = spectral.SpectralNormPenalty(0.5, "svd", 3)
    assert (renamed.lmbda, renamed.steps) == (0.5, 7)
    assert (positional.lmbda, positional.method, positional.steps) == (0.5, "svd", 3)
    exact = spectral.SpectralNormPenalty(lmbda=0.5, method="svd")
    torch.testing.assert_close(positional(model), exact(model))
    with pytest.raises(TypeError, match=r"got both 'iters' \(its old name\) and 'steps'"):
        spectral.SpectralNormPenalty(iters=2, steps=3)
    with pytest.raises(TypeError, match="takes keyword arguments only \\(4 given by position"):
        spectral.SpectralNormPenalty(0.5, "svd", 3, 4)


def test_vat_takes_its_old_alpha_iters_and_positions():
    with pytest.warns(DeprecationWarning, match=r"VATPenalty\(alpha=...\) is now VATPenalty\(lmbda=...\)"):
        vat = penalties.VATPenalty(alpha=2.0, iters=3)
    assert (vat.lmbda, vat.steps) == (2.0, 3)
    with pytest.warns(DeprecationWarning):
        vat = penalties.VATPenalty(2.0, 0.5, 1e-5, 2)
    assert (vat.lmbda, vat.eps, vat.xi, vat.steps) == (2.0, 0.5, 1e-5, 2)
    with pytest.raises(TypeError, match="got 'eps' both by position and by name"):
        penalties.VATPenalty(2.0, 0.5, eps=1.0)


def test_penalties_and_attacks_read_positions_in_their_earlier_order():
    with pytest.warns(DeprecationWarning):
        delta = penalties.AdversarialPerturbationPenalty(0.5, 3, 0.2, 2.0)
    assert (delta.eps, delta.steps, delta.step_size, delta.lmbda) == (0.5, 3, 0.2, 2.0)
    with pytest.warns(DeprecationWarning):
        loss = penalties.LossGradientPenalty(0.3, "l1")
    assert (loss.lmbda, loss.norm) == (0.3, "l1")
    with pytest.warns(DeprecationWarning):
        pgd = attacks.PGDL2(0.5, 7)
    assert (pgd.eps, pgd.steps, pgd.norm) == (0.5, 7, "l2")
    with pytest.warns(DeprecationWarning):
        stability = penalties.DeformationStabilityPenalty(0.2, 3)
    assert (stability.lmbda, stability.deformations) == (0.2, 3)
    model, x, y = _model(), torch.rand(5, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1])
    with pytest.warns(DeprecationWarning):
        old = penalties.GradientPenalty(0.1)
    torch.testing.assert_close(old(model, x, y), penalties.GradientPenalty(lmbda=0.1)(model, x, y))


APP_MODULES = [
    "builders", "checks", "cli", "config", "data", "environment", "evaluation", "extras", "plots", "regularizers",
    "report", "reproduction", "rundir", "signals", "studies", "sweep", "training", "zoo",
]  # fmt: skip


@pytest.mark.parametrize("module", APP_MODULES)
def test_an_application_module_keeps_its_old_path_with_a_warning(module):
    new = importlib.import_module(f"kernel_reg.app.{module}")
    own = [n for n, v in vars(new).items() if not n.startswith("_") and getattr(v, "__module__", None) == new.__name__]
    old = importlib.import_module(f"kernel_reg.{module}")
    with pytest.warns(DeprecationWarning, match=rf"kernel_reg\.{module} moved to kernel_reg\.app\.{module}"):
        value = getattr(old, own[0])
    assert value is getattr(new, own[0])
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


@pytest.mark.parametrize(("module", "name"), [("orthogonal", "CayleyConv2d"), ("margin", "LipschitzMargin")])
def test_the_lipschitz_modules_that_joined_the_package_keep_their_old_paths(module, name):
    old = importlib.import_module(f"kernel_reg.{module}")
    with pytest.warns(DeprecationWarning, match=rf"kernel_reg\.{module} moved to kernel_reg\.lipschitz\.{module}"):
        value = getattr(old, name)
    assert value is getattr(importlib.import_module("kernel_reg.lipschitz"), name)


def test_models_still_offers_maxmin_which_lives_with_the_lipschitz_layers():
    from kernel_reg import lipschitz, models

    assert models.MaxMin is lipschitz.MaxMin
