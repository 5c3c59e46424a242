"""The evaluation suite registry: settings and flags declared once, attacks built from one entry each, and
what records already say reproduced exactly."""

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from kernel_reg import attacks
from kernel_reg.app import suite
from kernel_reg.app.evaluation import evaluate_model
from kernel_reg.app.rundir import read_robustness
from kernel_reg.app.suite import EVAL_ATTACKS, EvalAttack, EvalSettings

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted(ROOT.glob("results/**/robustness.json"))


def parse(*argv: str) -> EvalSettings:
    parser = argparse.ArgumentParser()
    suite.add_flags(parser)
    return suite.from_args(parser.parse_args(list(argv)))


def test_every_setting_has_one_flag_and_no_flags_give_the_defaults():
    names = [name for f in dataclasses.fields(EvalSettings) for name in f.metadata["flag"].names]
    assert len(names) == len(set(names))
    assert parse() == EvalSettings()


def test_flags_set_each_setting_in_the_units_the_command_line_uses():
    got = parse(
        "--eps-l2", "0.25", "1", "--eps-linf", "4", "--attacks", "pgd, square", "--attack-steps", "7",
        "--l2-step", "0.1", "--linf-step", "0.002", "--restarts", "3", "--n-target-classes", "4",
        "--queries", "50", "--eval-n-test", "0", "--eval-batch-size", "64", "--no-checks",
        "--converge-every-radius", "--attack-seed", "5", "--lipschitz-probe", "0",
    )  # fmt: skip
    want = EvalSettings(
        l2_eps=(0.25, 1.0), linf_eps=(4 / 255,), attacks=("pgd", "square"), steps=7, l2_step_size=0.1,
        linf_step_size=0.002, restarts=3, n_target_classes=4, queries=50, n_test=None, batch_size=64, checks=False,
        converge_every_radius=True, seed=5, lipschitz_probe=0,
    )  # fmt: skip
    assert got == want
    assert parse("--eps-linf").linf_eps == () and parse("--eps-linf", "8").linf_eps == (8 / 255,)


@pytest.mark.parametrize("record", RECORDS, ids=lambda path: str(path.parent.relative_to(ROOT)))
def test_the_flags_of_every_recorded_evaluation_give_it_again(record):
    """``to_flags``: what a published evaluation was run with, as command-line arguments that parse back to it."""
    settings = read_robustness(record.parent).settings
    if settings.seed is None:  # evaluated before seeded attacks: no flag gives the global generator
        with pytest.raises(ValueError, match="seed is None"):
            suite.to_flags(settings)
        return
    assert parse(*suite.to_flags(settings)) == settings


def test_flags_round_trip_every_field_changed_and_refuse_what_they_cannot_say():
    changed = EvalSettings(
        l2_eps=(0.1, 1 / 3), linf_eps=(), attacks=("apgd-ce", "square"), steps=7, l2_step_size=0.1 + 0.2,
        linf_step_size=0.002, restarts=3, n_target_classes=4, queries=50, n_test=None, batch_size=64, checks=False,
        converge_every_radius=True, seed=5, lipschitz_probe=0,
    )  # fmt: skip
    arguments = suite.to_flags(changed)
    assert parse(*arguments) == changed
    assert arguments[arguments.index("--eval-n-test") + 1] == "0" and "--no-checks" in arguments
    assert suite.to_flags(EvalSettings()) and parse(*suite.to_flags(EvalSettings())) == EvalSettings()
    with pytest.raises(ValueError, match="cannot give these settings exactly"):
        suite.to_flags(dataclasses.replace(changed, linf_eps=(0.123456789 / 255,)))


def test_an_unknown_attack_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="apgd-ce") as error:
        parse("--attacks", "pgd,fgsm")
    assert "fgsm" in str(error.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--attacks", "pgd,,"), "an empty name in 'pgd,,'"),
        (("--attacks", "strong,apgd-ce"), "run an attack twice"),
        (("--attacks", "pgd,pgd"), "run an attack twice"),
        (("--eps-l2", "-1"), "--eps-l2 must be"),
        (("--eps-l2", "0.5", "0.5"), "--eps-l2 gives a radius twice"),
        (("--eps-linf", "300"), "--eps-linf must be at most 1 in the pixel units .* \\(300/255\\)"),
        (("--attack-seed", "-1"), "--attack-seed must be"),
        (("--eval-batch-size", "0"), "--eval-batch-size must be"),
        (("--attack-steps", "0"), "--attack-steps must be"),
        (("--l2-step", "nan"), "--l2-step must be"),
        (("--attacks", "fgsm"), "--attacks must be one of"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag_the_user_typed(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)


def test_the_same_attacks_get_the_same_title_however_they_are_named():
    strong, spelled = EvalSettings(attacks=("strong",)), EvalSettings(attacks=("apgd-ce", "apgd-t"))
    assert suite.robust_title("l2", strong) == suite.robust_title("l2", spelled) == "APGD-CE+APGD-T-l2"
    assert suite.describe_attacks("l2", strong) == suite.describe_attacks("l2", spelled)


def test_settings_round_trip_through_json_and_unknown_keys_are_named():
    settings = EvalSettings(l2_eps=(0.3,), linf_eps=(2 / 255,), attacks=("strong", "square"), seed=3)
    assert EvalSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ValueError, match="unknown step"):
        EvalSettings.from_dict({**settings.to_dict(), "step": 3})


@pytest.mark.parametrize("name", [n for n, a in EVAL_ATTACKS.items() if a.build is not None])
def test_each_attack_is_built_with_the_settings_budget_and_scale(name):
    settings = EvalSettings(steps=7, restarts=2, queries=30, n_target_classes=4, l2_step_size=0.2)
    once, twice = (suite.build_attack(name, "l2", 0.5, settings, scale) for scale in (1, 2))
    assert (once.norm, once.eps) == ("l2", 0.5) and once.name.startswith(EVAL_ATTACKS[name].title)
    budget = "queries" if name == "square" else "steps"
    assert getattr(twice, budget) == 2 * getattr(once, budget) == 2 * getattr(settings, budget)
    if name != "square":
        assert twice.restarts == 2 * once.restarts == 4
    if name.startswith("apgd"):
        assert (once.loss, once.targeted) == {"apgd-ce": ("ce", False), "apgd-dlr": ("dlr", False),
                                              "apgd-t": ("dlr", True)}[name]  # fmt: skip


def test_strong_is_the_library_strong_evaluation():
    settings = EvalSettings(attacks=("strong",), steps=9, restarts=2, n_target_classes=3)
    ours = suite.build_eval_attack("linf", 4 / 255, settings)
    library = attacks.strong(norm="linf", eps=4 / 255, steps=9, restarts=2, n_target_classes=3)
    assert isinstance(ours, attacks.WorstCase)

    def fields(attack):  # what decides its result (an untargeted APGD ignores n_target_classes)
        return {k: v for k, v in vars(attack).items() if k != "ball" and (attack.targeted or k != "n_target_classes")}

    assert [fields(a) for a in ours.attacks] == [fields(a) for a in library.attacks]


@pytest.mark.skipif(not RECORDS, reason="no committed evaluation records")
def test_the_registry_describes_every_committed_record_as_it_was_written():
    """Each record's attack descriptions were written by the if/elif code before the registry: the registry,
    given the record's settings, writes the same text, with APGD-T's target classes, which records name
    since 0.2.2 (``Robustness.described`` words older records so)."""
    for path in RECORDS:
        record = read_robustness(path.parent)
        for norm in ("l2", "linf"):
            if norm in record.attacks:
                written = record.attacks[norm]
                if "target classes" not in written:
                    targets = f", {record.settings.n_target_classes} target classes)"
                    written = re.sub(r"(APGD-T-\w+ \(.*?restart\(s\))\)", lambda m: m.group(1) + targets, written)
                assert suite.describe_attacks(norm, record.settings) == written, path
                assert record.described()[norm] == written, path


class Halfway(attacks.Attack):
    """A toy evaluation attack: moves each input half way to a fixed point (independent of the model)."""

    def __init__(self, eps: float) -> None:
        self.name, self.eps = "Halfway", eps

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + (0.5 - x).clamp(-self.eps, self.eps)


def test_a_new_attack_is_one_entry(monkeypatch):
    """One registry entry makes an attack known to the settings, the command line, the evaluation, its
    records and the report."""
    entry = EvalAttack("halfway", "Half", lambda norm, eps, s, scale, g: Halfway(eps),
                       lambda norm, s: "one step")  # fmt: skip
    monkeypatch.setitem(EVAL_ATTACKS, "halfway", entry)
    settings = parse("--attacks", "halfway", "--eps-l2", "0.3", "--eps-linf", "--no-checks", "--lipschitz-probe", "0")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(20, 1, 2, 2), torch.randint(0, 3, (20,))
    result = evaluate_model(model, x, y, settings, (1, 2, 2))
    moved = Halfway(0.3)(model, x, y)
    assert not torch.equal(moved, x) and result.l2["0.3"] == int((model(moved).argmax(1) == y).sum()) / 20
    assert result.attacks["l2"] == "Half-l2 (one step)"
    assert suite.robust_title("l2", settings) == "Half-l2"


def test_moved_names_still_import_from_evaluation_with_a_warning():
    from kernel_reg.app import evaluation, metrics

    with pytest.warns(DeprecationWarning, match="kernel_reg.app.suite") as caught:
        assert evaluation.EvalSettings is EvalSettings
    assert caught[0].filename == __file__  # the warning points at the user's line (shown outside __main__ too)
    with pytest.warns(DeprecationWarning, match="kernel_reg.app.metrics"):
        assert evaluation.robust_accuracy is metrics.robust_accuracy
    with pytest.warns(DeprecationWarning, match="EVAL_ATTACKS"):
        assert evaluation.ATTACK_NAMES == tuple(EVAL_ATTACKS)
