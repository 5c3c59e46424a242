"""The evaluation suite, declared once: its settings (``EvalSettings``, each field with its default, its
command-line flag and help) and its attacks (``EVAL_ATTACKS``, each with its name, title, budget and
builder). The command line (``add_flags``, ``from_args``), ``evaluate_model``, ``kernel-reg verify``, the
report's column titles and the benchmark read them.

Adding an evaluation attack is one ``EvalAttack`` entry (plus an ``EvalSettings`` field, with its flag, for a
parameter no attack had before) and its tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..arguments import check_choice, check_int, check_positive
from ..attacks import APGD, PGD, Attack, Square, WorstCase


@dataclass(frozen=True)
class Flag:
    """How the command line sets one ``EvalSettings`` field: its option names, help, the type of each value
    (None: a switch, ``store_false`` when the name starts with ``--no-``), ``nargs``, and the conversions
    between the setting and what the command line writes (``shown``: setting -> flag, ``read``: back)."""

    names: tuple[str, ...]
    help: str
    kind: type | None = int
    nargs: str | None = None
    shown: Callable[[Any], Any] | None = None
    read: Callable[[Any], Any] | None = None


def _flag(*names: str, help: str, **how: Any) -> Mapping[str, Flag]:
    return {"flag": Flag(names, help, **how)}


def _in_255ths(radii: tuple[float, ...]) -> list[float]:
    return [round(eps * 255, 6) for eps in radii]


def _from_255ths(radii: Sequence[float]) -> tuple[float, ...]:
    return tuple(eps / 255 for eps in radii)


def _attack_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if text.strip() and not all(names):  # "pgd,," or ",pgd": a name left out, not nothing
        raise ValueError(f"attacks: an empty name in {text!r}; give comma-separated names, e.g. 'strong,square'")
    return tuple(name for name in names if name)


@dataclass(frozen=True)
class EvalSettings:
    """The robustness evaluation's settings (frozen; checked on construction). Attack defaults are the
    original's (PGD, 100 steps, l2 step 0.5, linf step 0.01); ``attacks`` names the attacks whose
    per-example worst case gives each number (``EVAL_ATTACKS``; "strong": APGD-CE then APGD-T); ``checks``
    runs the gradient-masking checks, whose convergence check (twice the steps and restarts) runs at the
    middle radius of each norm, or at every one with ``converge_every_radius``. The attacks draw from their
    own generator seeded with ``seed``: an evaluation repeats exactly (on one device and thread count) and
    leaves the global RNG alone.

    Args:
        l2_eps: the l2 radii, each > 0 (default (0.1, 0.5, 1.0, 1.5)); also those of the certified accuracy.
        linf_eps: the linf radii, in [0, 1] pixel units, each > 0 (default 1/255, 2/255, 5/255, 8/255); at
            least one radius in all.
        attacks: a non-empty tuple of names of ``EVAL_ATTACKS`` (default ("pgd",)).
        steps: the iterations of PGD and APGD, >= 1 (default 100).
        l2_step_size: PGD's l2 step, > 0 (default 0.5).
        linf_step_size: PGD's linf step, > 0 (default 0.01).
        restarts: the runs of PGD (a random start when > 1) and of APGD, >= 1 (default 1).
        n_target_classes: APGD-T's target classes, >= 1 (default 9).
        queries: the Square attack's queries, >= 1 (default 1000), also the masking check's.
        n_test: how many test images (the first ones), >= 1 (default 1000); None: the run's configured
            ``n_test``.
        batch_size: examples per attack call, >= 1 (default 500).
        checks: run the gradient-masking checks (default True).
        converge_every_radius: the convergence check at every radius, not only the middle one (default
            False).
        seed: the seed of the attacks' generator, >= 0 (default 0); None only in records of evaluations
            made before seeded attacks, which drew from the global RNG.
        lipschitz_probe: test images whose Jacobian norms give the empirical lower bound of L, >= 0
            (default 100; 0: none).

    Raises:
        ValueError: for any invalid value, naming it.
    """

    l2_eps: tuple[float, ...] = field(
        default=(0.1, 0.5, 1.0, 1.5),
        metadata=_flag(
            "--eps-l2", "--eps_l2", help="l2 radii (none: skip l2)", kind=float, nargs="*", shown=list, read=tuple
        ),  # fmt: skip
    )
    linf_eps: tuple[float, ...] = field(
        default=(1 / 255, 2 / 255, 5 / 255, 8 / 255),
        metadata=_flag(
            "--eps-linf",
            "--eps_linf",
            help="linf radii in units of 1/255 (none: skip linf)",
            kind=float,
            nargs="*",
            shown=_in_255ths,
            read=_from_255ths,
        ),  # fmt: skip
    )
    attacks: tuple[str, ...] = field(
        default=("pgd",),
        metadata=_flag(
            "--attacks",
            help="comma-separated; each image counts as broken by any of them: {attacks}",
            kind=str,
            shown=",".join,
            read=_attack_list,
        ),  # fmt: skip
    )
    steps: int = field(
        default=100,
        metadata=_flag(
            "--attack-steps", "--attack_steps", help="iterations of each gradient attack, per restart and target"
        ),  # fmt: skip
    )
    l2_step_size: float = field(
        default=0.5,
        metadata=_flag(
            "--l2-step", "--l2_step", help="PGD's l2 step size (APGD adapts its own)", kind=float
        ),  # fmt: skip
    )
    linf_step_size: float = field(
        default=0.01, metadata=_flag("--linf-step", "--linf_step", help="PGD's linf step size", kind=float)
    )
    restarts: int = field(
        default=1, metadata=_flag("--restarts", help="random restarts of each attack (APGD-T: per target class)")
    )
    n_target_classes: int = field(
        default=9,
        metadata=_flag(
            "--n-target-classes",
            "--n_target_classes",
            help="APGD-T: the most likely wrong classes it targets, each in turn",
        ),  # fmt: skip
    )
    queries: int = field(
        default=1000, metadata=_flag("--queries", help="queries of the Square attack (also the masking check's)")
    )
    n_test: int | None = field(
        default=1000,
        metadata=_flag(
            "--eval-n-test",
            "--eval_n_test",
            help="evaluate on the first N test images (0: all)",
            shown=lambda n: n or 0,
            read=lambda n: n or None,
        ),  # fmt: skip
    )
    batch_size: int = field(
        default=500, metadata=_flag("--eval-batch-size", "--eval_batch_size", help="test images per attack call")
    )
    checks: bool = field(default=True, metadata=_flag("--no-checks", help="skip the gradient-masking checks",
                                                      kind=None))  # fmt: skip
    converge_every_radius: bool = field(
        default=False,
        metadata=_flag(
            "--converge-every-radius",
            "--converge_every_radius",
            kind=None,
            help="check convergence (twice the steps and restarts) at every radius, not only the middle one",
        ),  # fmt: skip
    )
    seed: int | None = field(
        default=0,
        metadata=_flag(
            "--attack-seed",
            "--attack_seed",
            help="seed of the attacks' random draws (the same seed repeats the evaluation)",
        ),  # fmt: skip
    )
    lipschitz_probe: int = field(
        default=100,
        metadata=_flag(
            "--lipschitz-probe",
            "--lipschitz_probe",
            help="test images whose Jacobian norms bound L from below (0: none)",
        ),  # fmt: skip
    )

    def __post_init__(self) -> None:
        for name, radii in (("l2_eps", self.l2_eps), ("linf_eps", self.linf_eps)):
            for eps in radii:
                check_positive(name, eps)
            if len(set(radii)) < len(radii):
                raise ValueError(f"{name} gives a radius twice: {', '.join(f'{e:g}' for e in radii)}")
        if any(eps > 1 for eps in self.linf_eps):
            eps = max(self.linf_eps)
            raise ValueError(f"linf_eps must be at most 1 in the pixel units of [0, 1] images (255/255), got {eps:g} "
                             f"({eps * 255:g}/255)")  # fmt: skip
        if not self.l2_eps and not self.linf_eps:
            raise ValueError("give at least one radius (l2_eps or linf_eps)")
        if not self.attacks:
            raise ValueError(f"attacks must name at least one of {', '.join(EVAL_ATTACKS)}")
        for name in self.attacks:
            check_choice("attacks", name, tuple(EVAL_ATTACKS))
        expanded = self.members()
        if len(set(expanded)) < len(expanded):
            raise ValueError(f"attacks {','.join(self.attacks)} run an attack twice (strong is apgd-ce + apgd-t): "
                             "name each once")  # fmt: skip
        for name in ("steps", "restarts", "n_target_classes", "queries", "batch_size"):
            check_int(name, getattr(self, name))
        check_positive("l2_step_size", self.l2_step_size)
        check_positive("linf_step_size", self.linf_step_size)
        if self.n_test is not None:
            check_int("n_test", self.n_test)
        if self.seed is not None:
            check_int("seed", self.seed, minimum=0)
        check_int("lipschitz_probe", self.lipschitz_probe, minimum=0)

    def members(self) -> list[str]:
        """The attack names, composites (as "strong") expanded."""
        return [m for a in self.attacks for m in EVAL_ATTACKS[a].members or (a,)]

    def step_size(self, norm: str) -> float:
        """PGD's step for ``norm``."""
        return self.l2_step_size if norm == "l2" else self.linf_step_size

    def generator(self) -> torch.Generator:
        """A fresh generator for the attacks' draws, seeded with ``seed`` (0 for a record made before seeded
        attacks: which draws the global RNG gave it is not recorded, so any seed repeats it as well)."""
        return torch.Generator().manual_seed(self.seed or 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalSettings:
        """The settings of a record (lists back to tuples). A record made before a field existed gets the
        value that evaluation then had: no seed (the global RNG), no Lipschitz probe."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"evaluation settings: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        before: dict[str, Any] = {"seed": None, "lipschitz_probe": 0}
        return cls(**{**before, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}})


AttackBuilder = Callable[[str, float, EvalSettings, int, "torch.Generator | None"], Attack]


@dataclass(frozen=True)
class EvalAttack:
    """One evaluation attack: its ``name`` (in ``EvalSettings.attacks``, on the command line and in records),
    the ``title`` of its numbers, its builder ``build(norm, eps, settings, scale, generator)`` (``scale``
    multiplies its steps, or queries, and restarts) and its budget's description under some settings; or,
    for a composite, the ``members`` whose per-example worst case it is."""

    name: str
    title: str
    build: AttackBuilder | None = None
    budget: Callable[[str, EvalSettings], str] | None = None
    members: tuple[str, ...] = ()


def _pgd(norm: str, eps: float, s: EvalSettings, scale: int, generator: torch.Generator | None) -> Attack:
    restarts = s.restarts * scale
    return PGD(norm=norm, eps=eps, steps=s.steps * scale, step_size=s.step_size(norm), random_start=restarts > 1,
               restarts=restarts, generator=generator)  # fmt: skip


def _apgd(
    loss: str, targeted: bool, norm: str, eps: float, s: EvalSettings, scale: int, generator: torch.Generator | None
) -> Attack:
    return APGD(norm=norm, eps=eps, loss=loss, targeted=targeted, n_target_classes=s.n_target_classes,
                steps=s.steps * scale, restarts=s.restarts * scale, generator=generator)  # fmt: skip


def _square(norm: str, eps: float, s: EvalSettings, scale: int, generator: torch.Generator | None) -> Attack:
    return Square(norm=norm, eps=eps, queries=s.queries * scale, generator=generator)


def _gradient_budget(norm: str, s: EvalSettings) -> str:
    return f"{s.steps} steps, {s.restarts} restart(s)"


def _targeted_budget(norm: str, s: EvalSettings) -> str:  # at most k - 1 of the targets exist for k classes
    return f"{_gradient_budget(norm, s)}, {s.n_target_classes} target classes"


EVAL_ATTACKS: dict[str, EvalAttack] = {
    attack.name: attack
    for attack in (
        # projected gradient ascent on the cross-entropy, fixed step (Madry et al.)
        EvalAttack("pgd", "PGD", _pgd,
                   lambda norm, s: f"{s.steps} steps of {s.step_size(norm):g}, {s.restarts} restart(s)"),
        # auto-PGD (Croce & Hein): on the cross-entropy, on the scale-invariant DLR loss, and targeted on the
        # DLR loss towards each likely wrong class in turn
        EvalAttack("apgd-ce", "APGD-CE", partial(_apgd, "ce", False), _gradient_budget),
        EvalAttack("apgd-dlr", "APGD-DLR", partial(_apgd, "dlr", False), _gradient_budget),
        EvalAttack("apgd-t", "APGD-T", partial(_apgd, "dlr", True), _targeted_budget),
        # gradient-free random search (Andriushchenko et al.)
        EvalAttack("square", "Square", _square, lambda norm, s: f"{s.queries} queries"),
        # the worst case of APGD-CE and APGD-T, AutoAttack's white-box part
        EvalAttack("strong", "APGD-CE+T", members=("apgd-ce", "apgd-t")),
    )
}  # fmt: skip


def build_attack(
    name: str, norm: str, eps: float, settings: EvalSettings, scale: int = 1, generator: torch.Generator | None = None
) -> Attack:
    """The evaluation attack ``name`` (not a composite) at one radius; ``scale`` multiplies its steps
    (queries) and restarts."""
    build = EVAL_ATTACKS[name].build
    if build is None:
        raise ValueError(f"{name} is a composite of {', '.join(EVAL_ATTACKS[name].members)}: build those")
    return build(norm, eps, settings, scale, generator)


def build_eval_attack(
    norm: str, eps: float, settings: EvalSettings, scale: int = 1, generator: torch.Generator | None = None
) -> Attack:
    """The worst case over the settings' attacks at one radius."""
    members = [build_attack(name, norm, eps, settings, scale, generator) for name in settings.members()]
    return members[0] if len(members) == 1 else WorstCase(attacks=members)


def describe_attacks(norm: str, settings: EvalSettings) -> str:
    """What gives the robust accuracy at each radius of ``norm``, as records and reports write it."""
    parts = []
    for name in settings.members():
        attack = EVAL_ATTACKS[name]
        assert attack.budget is not None  # members are never composites
        parts.append(f"{attack.title}-{norm} ({attack.budget(norm, settings)})")
    return "worst case of " + " + ".join(parts) if len(parts) > 1 else parts[0]


def robust_title(norm: str, settings: EvalSettings) -> str:
    """The title of robust accuracies under the settings' attacks, composites expanded (so that "strong" and
    "apgd-ce,apgd-t" share it): "PGD-l2", "APGD-CE+APGD-T-linf", "PGD+Square-l2"."""
    return "+".join(EVAL_ATTACKS[name].title for name in settings.members()) + f"-{norm}"


def shared_title(norm: str, settings: Iterable[EvalSettings]) -> str:
    """``robust_title`` of numbers measured under several settings when they all ran the same attacks, else
    "robust-l2" (the numbers' own records say which)."""
    used = {tuple(s.members()): s for s in settings}
    return robust_title(norm, next(iter(used.values()))) if len(used) == 1 else f"robust-{norm}"


def eps_key(eps: float) -> str:
    """The JSON key of a radius: its shortest exact-enough decimal."""
    return f"{eps:.6g}"


def add_flags(parser: argparse.ArgumentParser, title: str = "evaluation") -> None:
    """One option per ``EvalSettings`` field (its ``Flag``), default the field's, stored as ``eval_<field>``,
    in an argument group named ``title``."""
    group = parser.add_argument_group(title)
    defaults = EvalSettings()
    names = ", ".join(a.name if a.build else f"{a.name} (= {' + '.join(a.members)})" for a in EVAL_ATTACKS.values())
    for f in dataclasses.fields(EvalSettings):
        flag: Flag = f.metadata["flag"]
        dest, metavar = f"eval_{f.name}", flag.names[0].removeprefix("--").upper().replace("-", "_")
        if flag.kind is None:
            action = "store_false" if flag.names[0].startswith("--no-") else "store_true"
            group.add_argument(*flag.names, dest=dest, action=action, help=flag.help.format(attacks=names))
            continue
        value = getattr(defaults, f.name)
        shown = flag.shown(value) if flag.shown else value
        text = " ".join(f"{v:g}" for v in shown) if isinstance(shown, list) else shown
        group.add_argument(*flag.names, dest=dest, metavar=metavar, type=flag.kind, nargs=flag.nargs, default=shown,
                           help=f"{flag.help.format(attacks=names)} (default: {text})")  # fmt: skip


def flags_set(settings: EvalSettings) -> list[str]:
    """The options of ``add_flags`` whose value in ``settings`` is not the default."""
    defaults = EvalSettings()
    return [f.metadata["flag"].names[0] for f in dataclasses.fields(EvalSettings)
            if getattr(settings, f.name) != getattr(defaults, f.name)]  # fmt: skip


def to_flags(settings: EvalSettings) -> list[str]:
    """The command-line arguments of ``add_flags`` that give back ``settings``: ``from_args`` of them parsed
    equals it (floats written by ``repr``, which reads back exactly). ValueError for settings the command
    line cannot give: an unseeded evaluation of an old record (seed None), a linf radius that is no multiple
    of 1e-6/255."""
    arguments: list[str] = []
    for f in dataclasses.fields(EvalSettings):
        flag: Flag = f.metadata["flag"]
        value = getattr(settings, f.name)
        if flag.kind is None:  # a switch: given when it changes the default
            if value != getattr(EvalSettings(), f.name):
                arguments.append(flag.names[0])
            continue
        if value is None and flag.shown is None:
            raise ValueError(f"{f.name} is None, which {flag.names[0]} cannot give")
        shown = flag.shown(value) if flag.shown else value
        values = shown if isinstance(shown, list) else [shown]
        arguments += [flag.names[0], *(repr(v) if isinstance(v, float) else str(v) for v in values)]
    parser = argparse.ArgumentParser()
    add_flags(parser)
    if from_args(parser.parse_args(arguments)) != settings:
        raise ValueError(f"the command line cannot give these settings exactly: {settings}")
    return arguments


def from_args(args: argparse.Namespace) -> EvalSettings:
    """The settings that the options of ``add_flags`` give; ValueError naming the flag at fault."""
    fields = dataclasses.fields(EvalSettings)
    try:
        values = {}
        for f in fields:
            flag: Flag = f.metadata["flag"]
            value = getattr(args, f"eval_{f.name}")
            values[f.name] = flag.read(value) if flag.read else value
        return EvalSettings(**values)
    except ValueError as error:
        message = str(error)
        for f in fields:  # the checks name the field: say the flag the user typed
            message = re.sub(rf"(?<![\w-]){f.name}(?![\w-])", f.metadata["flag"].names[0], message)
        raise ValueError(message) from None
