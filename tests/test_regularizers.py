"""The regularizer registry: each entry builds what it declares, keys reach the right hyperparameters,
and the original's flags keep their meaning."""

import pytest
import torch

from kernel_reg import attacks, penalties, spectral
from kernel_reg.app import regularizers
from kernel_reg.app.config import Config, RegSetting, preset_config
from kernel_reg.app.regularizers import ALIASES, REGISTRY, targets

KINDS = {"penalty": object, "attack": (attacks.PGDL2, attacks.PGDLinf), "projection": spectral.Projection}


@pytest.mark.parametrize("name", regularizers.NAMES)
def test_every_entry_builds_its_kind_with_its_hyperparameters(name):
    entry = REGISTRY[name]
    made = regularizers.build(name, entry.defaults())
    assert isinstance(made, KINDS[entry.kind])
    assert entry.original_flag.startswith("--reg_") and "-" not in entry.original_flag[2:]
    if entry.kind == "penalty":
        inner = made.penalty if isinstance(made, penalties.FirstExamples) else made
        assert inner.lmbda == entry.defaults()["lmbda"]
    strengths = [p.name for p in entry.params if p.strength]
    assert strengths, f"{name} has no strength to report"


def test_the_original_flags_and_defaults_are_kept():
    flags = {name: r.original_flag for name, r in REGISTRY.items()}
    assert flags["adv-perturbation"] == "--reg_adv_perturbation_penalty"
    assert (flags["pgd-l2"], flags["pgd-linf"]) == ("--reg_pgdl2", "--reg_pgdlinf")
    assert flags["penalize-sn-pi"] == "--reg_penalize_sn_pi"
    # the original's argparse defaults
    assert REGISTRY["gradient-penalty"].defaults()["lmbda"] == 0.1 and REGISTRY["pgd-l2"].defaults()["epsilon"] == 0.1
    # the original's two hyperparameters keep their values; later additions default to the original behaviour
    assert REGISTRY["project-sn"].defaults() == {"tau": 0.5, "kappa": 2.0, "norm": "reshaped", "steps": 1}
    assert REGISTRY["penalize-sn-pi"].defaults() == {"lmbda": 0.01, "steps": 2, "norm": "reshaped"}
    assert REGISTRY["vat"].defaults()["xi"] == 1e-6
    assert sorted(r for r, _ in ALIASES["lmbda"]) == ["gradient-penalty", "loss-gradl1", "loss-gradl2"]
    assert ALIASES["vat_alpha"] == [("vat", "lmbda")] and ALIASES["lmbdast"] == [("stability", "lmbda")]


def test_keys_reach_the_hyperparameters_they_name():
    assert targets("lmbda", ("gradient-penalty", "vat")) == [("gradient-penalty", "lmbda")]  # the original's --lmbda
    assert targets("lmbda", ("vat",)) == [("vat", "lmbda")]  # no reader of --lmbda: the name itself
    assert targets("vat.lmbda", ("gradient-penalty", "vat")) == [("vat", "lmbda")]
    assert targets("epsilon", ("vat", "pgd-l2")) == [("vat", "epsilon"), ("pgd-l2", "epsilon")]
    assert targets("tau", ("vat",)) == []
    with pytest.raises(ValueError, match="vat has no hyperparameter 'tau'; its hyperparameters: lmbda, epsilon, xi"):
        targets("vat.tau", ("vat",))
    with pytest.raises(ValueError, match="regularizer must be one of"):
        targets("dropout.p", ())


def test_two_regularizers_keep_two_strengths():
    config = preset_config("fmnist300_vgg5", regs=("gradient-penalty", "loss-gradl2"), lmbda=0.5)
    assert [r["lmbda"] for r in config.regs] == [0.5, 0.5]  # --lmbda sets both, as the original's flag would
    config = config.updated({"loss-gradl2.lmbda": 2.0})
    assert config.reg("gradient-penalty")["lmbda"] == 0.5 and config.reg("loss-gradl2")["lmbda"] == 2.0
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"name": "pgd-l2", "epsilon": 0}, "pgd-l2.epsilon must be a finite number > 0"),
        ({"name": "pgd-l2", "steps": 2.5}, "pgd-l2.steps must be an integer >= 1"),
        ({"name": "adv-perturbation", "candidates": 0}, "adv-perturbation.candidates must be an integer >= 1 or none"),
        ({"name": "vat", "alpha": 1}, "vat has no hyperparameter 'alpha'"),
        ({"lmbda": 1}, "a regularizer entry needs a 'name'"),
    ],
)
def test_bad_settings_name_the_hyperparameter(setting, message):
    with pytest.raises(ValueError, match=message):
        Config(regs=(setting,))


def test_a_negative_weight_is_refused():
    with pytest.raises(ValueError, match="gradient-penalty.lmbda must be a finite number >= 0"):
        RegSetting("gradient-penalty", (("lmbda", -1.0),))


def test_a_regularizer_is_selected_once_and_one_adversarial_training_at_most():
    with pytest.raises(ValueError, match="each regularizer can be selected once, got vat twice"):
        Config(regs=("vat", "vat"))
    with pytest.raises(ValueError, match="at most one adversarial training"):
        Config(regs=("pgd-l2", "pgd-linf"))


def test_deformation_penalties_apply_to_the_first_examples_when_asked():
    made = regularizers.build("stability", {**REGISTRY["stability"].defaults(), "examples_per_batch": 3})
    assert isinstance(made, penalties.FirstExamples) and made.count == 3
    seen = []
    made.penalty = lambda model, x, y: seen.append(len(x)) or torch.zeros(())
    made(None, torch.zeros(8, 1, 4, 4), None)
    assert seen == [3]


# the registry's hyperparameter -> the attribute of the library object that holds it
LIBRARY_ATTRIBUTE = {"epsilon": "eps"}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_command_line_default_is_the_librarys_unless_it_says_why(name):
    """One source of defaults: the library class's signature. A registry default that differs declares why
    (the original's flag), and then really differs, so that a stale reason fails too."""
    entry = regularizers.REGISTRY[name]
    built = entry.build(entry.defaults(), regularizers.Context(input_shape=(1, 28, 28)))
    bare = type(built)()  # every library default
    checked = 0
    for param in entry.params:
        attribute = LIBRARY_ATTRIBUTE.get(param.name, param.name)
        holder_built, holder_bare = (built.sampler, bare.sampler) if param.name == "amplitude" else (built, bare)
        if not hasattr(holder_bare, attribute):
            continue  # a setting of the application (e.g. examples_per_batch), not of the library object
        checked += 1
        assert getattr(holder_built, attribute) == param.default
        library = getattr(holder_bare, attribute)
        if param.differs:
            assert library != param.default, f"{name}.{param.name}: says it differs ({param.differs}), but does not"
        else:
            assert library == param.default, (
                f"{name}.{param.name}: the command line's default {param.default!r} is not the library's {library!r}; "
                "take the library's, or say why with Param(differs=...)"
            )
    assert checked >= 1
