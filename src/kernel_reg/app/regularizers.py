"""The regularizers a run can use, each declared once: its name, the original's flag, its own
hyperparameters and its builder. Configuration, command line, training, sweeps, reports and the
benchmark all read this registry; adding a regularizer is one entry in ``REGISTRY``.

A regularizer is a penalty (``penalty(model, x, y) -> weighted scalar``, summed into the loss), an
attack (adversarial training: the batch is replaced by ``attack(model, x, y)``) or the projection of
the spectral constraint (applied after each optimizer step).

Each hyperparameter has a name of its own (``lmbda`` is the weight of every penalty) and, where the
original script had one, the original's shared flag (``--lmbda``, ``--lmbdast``, ``--epsilon``, ...),
which sets it in every selected regularizer that reads that flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import penalties, spectral
from ..arguments import check_choice, check_int, check_nonnegative, check_positive
from ..attacks import PGDL2, Attack, PGDLinf
from ..deformations import RandomDeformation
from ..distributed import SINGLE, Group

Value = float | int | str | None
Built = penalties.Penalty | Attack | spectral.Projection


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its name, default, kind ("weight" and "positive": floats >= 0 / > 0; "count":
    an integer >= 1; "optional-count": the same or None, meaning all; "choice": one of ``choices``), the
    original's flag that sets it
    (snake case, or None), whether it is the regularizer's strength (always shown in run names and
    reports), and a short help text."""

    name: str
    default: Value
    kind: str
    help: str
    alias: str | None = None
    strength: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    # why the command line's default differs from the library's (the library class's signature is the truth:
    # a test checks that every other default equals it)
    differs: str = ""

    def check(self, value: Any, owner: str) -> Value:
        """``value`` validated (ints accepted for floats); ValueError naming ``owner.name`` otherwise."""
        label = f"{owner}.{self.name}"
        if self.kind == "choice":
            return check_choice(label, value, self.choices)
        if self.kind in ("weight", "positive"):
            number = check_nonnegative(label, value) if self.kind == "weight" else check_positive(label, value)
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"{label} must be <= {self.maximum:g} ({self.help}), got {value!r}")
            return number
        if self.kind == "optional-count":
            if value is None:
                return None
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label} must be an integer >= 1 or none (all examples), got {value!r}")
            return value
        return check_int(label, value)

    def parse(self, text: str) -> Value:
        """The value from command-line or grid text ("none" or "all" for an optional count's None)."""
        if self.kind == "optional-count" and text.lower() in ("none", "all"):
            return None
        if self.kind == "choice":
            return text
        try:
            return float(text) if self.kind in ("weight", "positive") else int(text)
        except ValueError:
            expected = "a number" if self.kind in ("weight", "positive") else "an integer"
            raise ValueError(f"{self.name} must be {expected}, got {text!r}") from None


@dataclass(frozen=True)
class Regularizer:
    """One registry entry: ``build(params, context)`` makes the penalty, attack or projection from the
    values of ``params`` (a mapping name -> value) for the run ``context`` describes."""

    name: str
    kind: str  # "penalty" | "attack" | "projection"
    help: str
    params: tuple[Param, ...]
    build: Callable[[Mapping[str, Any], Context], Built]
    original_flag: str

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.params)
        raise ValueError(f"{self.name} has no hyperparameter {name!r}; its hyperparameters: {valid}")

    def defaults(self) -> dict[str, Value]:
        return {p.name: p.default for p in self.params}


@dataclass(frozen=True)
class Context:
    """What a builder may need to know of the run: its processes and the shape of one input."""

    group: Group = SINGLE
    input_shape: tuple[int, ...] | None = None


def _gradient_method() -> tuple[Param, Param]:
    return (
        Param("method", "exact", "choice", "how the penalty's parameter gradient is computed: by double "
              "backpropagation, or by a finite difference along the input gradient (no double backward)",
              choices=penalties.METHODS),
        Param("h", 1.0, "positive", "finite-difference step, along a unit direction"),
    )  # fmt: skip


def _sn_norm() -> Param:
    return Param("norm", "reshaped", "choice", "the norm bounded: of the reshaped kernel (the original's) or of "
                 "the layer as an operator on its inputs (guaranteed, for certificates)", "sn_norm",
                 choices=spectral.NORMS)  # fmt: skip


def _lmbda(default: float, alias: str | None, strength: bool = True) -> Param:
    return Param("lmbda", default, "weight", "weight of the penalty", alias, strength)


# the original's shared --epsilon flag defaults to 0.1 for every regularizer it sets; the library's classes to
# their own radius (1.0 in l2)
ORIGINAL_EPSILON = "the original's shared --epsilon flag, 0.1 for every regularizer it sets"


def _epsilon(help: str) -> Param:
    return Param("epsilon", 0.1, "positive", help, "epsilon", strength=True, differs=ORIGINAL_EPSILON)


def _steps(help: str) -> Param:
    return Param("steps", 5, "count", help, "steps")


def _examples_per_batch() -> Param:
    return Param("examples_per_batch", None, "optional-count", "apply to the first N examples of a batch (none: all)",
                 "stability_ex_per_batch")  # fmt: skip


def _amplitude() -> Param:
    return Param("amplitude", 1.0, "weight", "amplitude of the random deformations (pixels)")


def _first_examples(penalty: penalties.Penalty, count: int | None) -> penalties.Penalty:
    return penalty if count is None else penalties.FirstExamples(penalty=penalty, count=count)


def _deformation_entry(
    name: str, help: str, penalty: type, weight_flag: str, deformations: Param, *extra: Param
) -> Regularizer:
    """||f||_tau^2 and ||D_tau f||^2: a weight, random deformations per example, optionally on the first
    examples of a batch only, deformation amplitude."""

    def build(p: Mapping[str, Any], c: Context) -> penalties.Penalty:
        sampler = RandomDeformation(amplitude=p["amplitude"])
        options = {param.name: p[param.name] for param in extra}
        made = penalty(lmbda=p["lmbda"], deformations=p["deformations"], sampler=sampler, group=c.group, **options)
        return _first_examples(made, p["examples_per_batch"])

    params = (_lmbda(0.1, weight_flag), deformations, _examples_per_batch(), _amplitude(), *extra)
    return _entry(name, "penalty", help, params, build)


def _entry(name: str, kind: str, help: str, params: tuple[Param, ...], build: Callable, flag: str = "") -> Regularizer:
    return Regularizer(name, kind, help, params, build, "--reg_" + (flag or name.replace("-", "_")))


REGISTRY: dict[str, Regularizer] = {
    r.name: r
    for r in (
        _entry(
            "adv-perturbation", "penalty", "||f||_delta^2, the adversarial perturbation penalty",
            (_epsilon("radius of the l2 perturbation"), _steps("ascent steps of the inner maximisation"),
             Param("candidates", None, "optional-count",
                   "search only the N examples of largest class-gradient norm per class (none: every example)",
                   "delta_candidates"),
             _lmbda(1.0, None, strength=False)),
            lambda p, c: penalties.AdversarialPerturbationPenalty(
                lmbda=p["lmbda"], eps=p["epsilon"], steps=p["steps"], candidates=p["candidates"], group=c.group
            ),
            flag="adv_perturbation_penalty",
        ),
        _entry(
            "gradient-penalty", "penalty", "||grad f||^2, the supremum input-gradient penalty",
            (_lmbda(0.1, "lmbda"), *_gradient_method()),
            lambda p, c: penalties.GradientPenalty(lmbda=p["lmbda"], method=p["method"], h=p["h"], group=c.group),
        ),
        _entry(
            "loss-gradl2", "penalty", "grad-l2: the squared l2 norm of the loss gradient",
            (_lmbda(0.1, "lmbda"), *_gradient_method()),
            lambda p, c: penalties.LossGradientPenalty(lmbda=p["lmbda"], norm="l2", method=p["method"], h=p["h"]),
        ),
        _entry(
            "loss-gradl1", "penalty", "grad-l1: the l1 norm of the loss gradient",
            (_lmbda(0.1, "lmbda"),),
            lambda p, c: penalties.LossGradientPenalty(lmbda=p["lmbda"], norm="l1"),
        ),
        _entry(
            "vat", "penalty", "virtual adversarial training",
            (_lmbda(1.0, "vat_alpha"), _epsilon("radius of the virtual adversarial perturbation"),
             Param("xi", 1e-6, "positive", "finite-difference step of the power iteration", "vat_xi")),
            lambda p, c: penalties.VATPenalty(lmbda=p["lmbda"], eps=p["epsilon"], xi=p["xi"], group=c.group),
        ),
        _deformation_entry(
            "stability", "||f||_tau^2, stability to random deformations", penalties.DeformationStabilityPenalty,
            "lmbdast", Param("deformations", 8, "count", "random deformations per example", "stability_tr_per_ex",
                             differs="the original's --stability_tr_per_ex, 8"),
        ),
        _deformation_entry(
            "gradtangent", "||D_tau f||^2, gradients along deformation tangents", penalties.TangentGradientPenalty,
            "lmbdatan", Param("deformations", 8, "count", "tangent vectors per example", "stability_num_deformations",
                              differs="the original's --stability_num_deformations, 8"),
            *_gradient_method(),
        ),
        _entry(
            "pgd-l2", "attack", "adversarial training with PGD in the l2 ball",
            (_epsilon("radius of the l2 ball"), _steps("PGD steps")),
            lambda p, c: PGDL2(eps=p["epsilon"], steps=p["steps"], group=c.group),
            flag="pgdl2",
        ),
        _entry(
            "pgd-linf", "attack", "adversarial training with PGD in the linf ball",
            (Param("epsilon", 0.1, "positive", "radius of the linf ball on inputs in [0, 1]: 8/255 is 0.0314",
                   "epsilon", strength=True, maximum=1.0, differs=ORIGINAL_EPSILON),
             _steps("PGD steps"),
             Param("step_size", 0.01, "positive", "size of a sign step on inputs in [0, 1]", "linf_step_size",
                   maximum=1.0)),
            lambda p, c: PGDLinf(eps=p["epsilon"], steps=p["steps"], step_size=p["step_size"], group=c.group),
            flag="pgdlinf",
        ),
        _entry(
            "project-sn", "projection", "projection of every layer on {sigma_max <= tau(epoch)} after each step",
            (Param("tau", 0.5, "positive", "final radius of the constraint", "tau", strength=True),
             Param("kappa", 2.0, "weight", "decay of the radius, tau (1 + 4 exp(-epoch / kappa)); 0: tau throughout",
                   "kappa"),
             _sn_norm(),
             Param("steps", 1, "count", "operator norm: power-iteration steps per training step")),
            lambda p, c: spectral.Projection(tau=p["tau"], kappa=p["kappa"], norm=p["norm"],
                                             input_shape=c.input_shape, steps=p["steps"]),
        ),
        _entry(
            "penalize-sn-pi", "penalty", "spectral-norm penalty by power iteration",
            (_lmbda(0.01, "lmbdasn"), Param("steps", 2, "count", "power-iteration steps per training step", "nb_it"),
             _sn_norm()),
            lambda p, c: spectral.SpectralNormPenalty(lmbda=p["lmbda"], method="power", steps=p["steps"],
                                                      norm=p["norm"]),
        ),
        _entry(
            "penalize-sn-svd", "penalty", "spectral-norm penalty with exact largest singular values",
            (_lmbda(0.01, "lmbdasn"),),
            lambda p, c: spectral.SpectralNormPenalty(lmbda=p["lmbda"], method="svd"),
        ),
    )
}  # fmt: skip
NAMES = tuple(REGISTRY)
ADVERSARIAL = tuple(name for name, r in REGISTRY.items() if r.kind == "attack")
# the original's shared hyperparameter flags (snake case), each with the (regularizer, hyperparameter) it sets
ALIASES: dict[str, list[tuple[str, str]]] = {}
for _reg in REGISTRY.values():
    for _param in _reg.params:
        if _param.alias is not None:
            ALIASES.setdefault(_param.alias, []).append((_reg.name, _param.name))


def lookup(name: str) -> Regularizer:
    """The registry entry of ``name``; ValueError naming the valid regularizers otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"regularizer must be one of {', '.join(NAMES)}, got {name!r}")
    return REGISTRY[name]


def targets(key: str, selected: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (regularizer, hyperparameter) pairs among the ``selected`` regularizers that a key sets.

    ``"reg.param"`` names one; a bare key sets every selected regularizer whose hyperparameter reads the
    original's flag of that name (``lmbda``: gradient-penalty, loss-gradl2, loss-gradl1), or else every
    one with a hyperparameter of that name. Empty when none of the selected ones takes it."""
    if "." in key:
        reg, _, param = key.partition(".")
        lookup(reg).param(param)
        return [(reg, param)] if reg in selected else []
    aliased = [(reg, param) for reg, param in ALIASES.get(key, []) if reg in selected]
    if aliased:
        return aliased
    return [(reg, key) for reg in selected if any(p.name == key for p in REGISTRY[reg].params)]


def is_param_key(key: str) -> bool:
    """Whether ``key`` names a regularizer hyperparameter (``reg.param``, an original flag, or a name)."""
    if "." in key:
        return key.partition(".")[0] in REGISTRY
    return key in ALIASES or any(p.name == key for r in REGISTRY.values() for p in r.params)


def param_of(key: str) -> Param:
    """The ``Param`` a key refers to (for parsing its text): the first regularizer that declares it."""
    if "." in key:
        reg, _, name = key.partition(".")
        return lookup(reg).param(name)
    reg, name = (
        ALIASES[key][0]
        if key in ALIASES
        else next((r.name, p.name) for r in REGISTRY.values() for p in r.params if p.name == key)
    )
    return REGISTRY[reg].param(name)


def build(
    name: str, params: Mapping[str, Any], group: Group = SINGLE, input_shape: Sequence[int] | None = None
) -> Built:
    """The penalty, attack or projection of regularizer ``name`` with hyperparameters ``params``, for a run
    on the processes of ``group`` whose inputs have ``input_shape`` (needed by the operator norms)."""
    return lookup(name).build(params, Context(group, None if input_shape is None else tuple(input_shape)))
