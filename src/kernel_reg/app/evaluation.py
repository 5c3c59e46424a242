"""Evaluation of a model: clean accuracy, robust accuracy under configurable attacks, certified
accuracy, and the gradient-masking checks that say when a robust accuracy is not to be trusted; of a
run folder: ``robustness.json``."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import lipschitz
from ..arguments import check_choice, check_int, check_positive
from ..attacks import APGD, PGD, Attack, AttackFn, Square, WorstCase
from ..guard import preserved_state
from ..progress import progress
from . import checks
from .builders import LoadedRun, load_run
from .checks import radius_text
from .data import batches
from .rundir import (
    CERTIFIED,
    CHECKPOINT,
    ROBUSTNESS,
    WEIGHTS,
    Certification,
    MaskingCheck,
    Robustness,
    locked,
    pack_bits,
    read_config,
    write_certification,
    write_robustness,
)


def _in_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, description: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) in order, ``batch_size`` examples at a time, with a progress bar on a terminal."""
    return progress(batches(x, y, batch_size), math.ceil(x.shape[0] / batch_size), description)


def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, description: str = "accuracy"
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on (x, y):

        (1/n sum_i CE(f(x_i), y_i), 1/n #{i : argmax_j f_j(x_i) = y_i}),

    without gradients, ``batch_size`` examples per forward pass; the model is left as it was found.

    Args:
        model: maps x to logits (n, k).
        x: the inputs, (n, *shape).
        y: their class indices, (n,).
        batch_size: examples per forward pass (default 512).
        description: the progress bar's label (default "accuracy").

    Returns:
        (loss, accuracy), floats; (NaN, NaN) for an empty set.
    """
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    loss, correct = 0.0, 0
    with preserved_state(model, mode=False), torch.no_grad():
        for xb, target in _in_batches(x, y, batch_size, description):
            logits = model(xb)
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    return loss / x.shape[0], correct / x.shape[0]


def robust_correct(
    model: nn.Module, attack: AttackFn, x: torch.Tensor, y: torch.Tensor, batch_size: int, description: str = "attack"
) -> torch.Tensor:
    """Per example: still correctly classified after ``attack``, argmax_j f_j(attack(x_i)) = y_i.

    The attack runs once per batch of ``batch_size`` examples; its points are classified in eval mode,
    without gradients.

    Args:
        model: maps x to logits (n, k).
        attack: an ``Attack`` or any function (model, x, y) -> x_adv.
        x: the inputs, (n, *shape).
        y: their class indices, (n,).
        batch_size: examples per attack call, >= 1.
        description: the progress bar's label (default "attack").

    Returns:
        A bool tensor (n,) on x's device: True where the attack failed.
    """
    correct = []
    for xb, yb in _in_batches(x, y, batch_size, description):
        x_adv = attack(model, xb, yb)
        with preserved_state(model, mode=False), torch.no_grad():
            correct.append(model(x_adv).argmax(1) == yb)
    return torch.cat(correct)


def robust_accuracy(
    model: nn.Module, attack: AttackFn, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> float:
    """Robust accuracy: the fraction of examples still correctly classified after ``attack``,
    1/n #{i : argmax_j f_j(attack(x_i)) = y_i} (see ``robust_correct``).

    Args:
        model: maps x to logits (n, k).
        attack: an ``Attack`` or any function (model, x, y) -> x_adv.
        x: the inputs, (n, *shape), n >= 1.
        y: their class indices, (n,).
        batch_size: examples per attack call (default 512).

    Returns:
        The robust accuracy, a float in [0, 1] (NaN for an empty set).
    """
    if x.shape[0] == 0:
        return float("nan")
    return int(robust_correct(model, attack, x, y, batch_size).sum()) / x.shape[0]


ATTACK_NAMES = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square", "strong")


@dataclass(frozen=True)
class EvalSettings:
    """The robustness evaluation's settings (frozen; checked on construction). Attack defaults are the
    original's (PGD, 100 steps, l2 step 0.5, linf step 0.01); ``attacks`` names the attacks whose
    per-example worst case gives each number ("strong": APGD-CE then APGD-T); ``checks`` runs the
    gradient-masking checks, whose convergence check (twice the steps and restarts) runs at the middle
    radius of each norm, or at every one with ``converge_every_radius``. The attacks draw from their own
    generator seeded with ``seed``: an evaluation repeats exactly (on one device and thread count) and
    leaves the global RNG alone.

    Args:
        l2_eps: the l2 radii, each > 0 (default (0.1, 0.5, 1.0, 1.5)); also those of the certified accuracy.
        linf_eps: the linf radii, in [0, 1] pixel units, each > 0 (default 1/255, 2/255, 5/255, 8/255); at
            least one radius in all.
        attacks: a non-empty tuple of "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square" and "strong"
            (default ("pgd",)).
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
        seed: the seed of the attacks' generator, >= 0 (default 0).

    Raises:
        ValueError: for any invalid value, naming it.
    """

    l2_eps: tuple[float, ...] = (0.1, 0.5, 1.0, 1.5)
    linf_eps: tuple[float, ...] = (1 / 255, 2 / 255, 5 / 255, 8 / 255)
    attacks: tuple[str, ...] = ("pgd",)
    steps: int = 100
    l2_step_size: float = 0.5
    linf_step_size: float = 0.01
    restarts: int = 1
    n_target_classes: int = 9
    queries: int = 1000
    n_test: int | None = 1000
    batch_size: int = 500
    checks: bool = True
    converge_every_radius: bool = False
    seed: int = 0  # of the attacks' random draws (their own generator: the global RNG is left alone)
    lipschitz_probe: int = 100  # test images whose Jacobian norms give the empirical lower bound of L (0: none)

    def __post_init__(self) -> None:
        for eps in self.l2_eps + self.linf_eps:
            check_positive("eps_test", eps)
        if not self.l2_eps and not self.linf_eps:
            raise ValueError("give at least one radius (eps_l2 or eps_linf)")
        if not self.attacks:
            raise ValueError(f"attacks must name at least one of {', '.join(ATTACK_NAMES)}")
        for name in self.attacks:
            check_choice("attack", name, ATTACK_NAMES)
        for name in ("steps", "restarts", "n_target_classes", "queries", "batch_size"):
            check_int(name, getattr(self, name))
        check_positive("l2_step_size", self.l2_step_size)
        check_positive("linf_step_size", self.linf_step_size)
        if self.n_test is not None:
            check_int("n_test", self.n_test)
        check_int("seed", self.seed, minimum=0)
        check_int("lipschitz_probe", self.lipschitz_probe, minimum=0)

    def members(self) -> list[str]:
        """The attack names, "strong" expanded, without repeats."""
        names = [m for a in self.attacks for m in (("apgd-ce", "apgd-t") if a == "strong" else (a,))]
        return list(dict.fromkeys(names))


def build_attack(
    name: str, norm: str, eps: float, settings: EvalSettings, scale: int = 1, generator: torch.Generator | None = None
) -> Attack:
    """One evaluation attack by name; ``scale`` multiplies its steps (queries) and restarts."""
    steps, restarts = settings.steps * scale, settings.restarts * scale
    if name == "pgd":
        step = settings.l2_step_size if norm == "l2" else settings.linf_step_size
        return PGD(norm=norm, eps=eps, steps=steps, step_size=step, random_start=restarts > 1, restarts=restarts,
                   generator=generator)  # fmt: skip
    if name == "square":
        return Square(norm=norm, eps=eps, queries=settings.queries * scale, generator=generator)
    loss = "ce" if name == "apgd-ce" else "dlr"
    return APGD(norm=norm, eps=eps, loss=loss, targeted=name == "apgd-t", n_target_classes=settings.n_target_classes,
                steps=steps, restarts=restarts, generator=generator)  # fmt: skip


def build_eval_attack(
    norm: str, eps: float, settings: EvalSettings, scale: int = 1, generator: torch.Generator | None = None
) -> Attack:
    """The worst case over the settings' attacks at one radius."""
    members = [build_attack(name, norm, eps, settings, scale, generator) for name in settings.members()]
    return members[0] if len(members) == 1 else WorstCase(attacks=members)


def describe_attacks(norm: str, settings: EvalSettings) -> str:
    step = settings.l2_step_size if norm == "l2" else settings.linf_step_size
    parts = []
    for name in settings.members():
        if name == "pgd":
            parts.append(f"PGD-{norm} ({settings.steps} steps of {step:g}, {settings.restarts} restart(s))")
        elif name == "square":
            parts.append(f"Square-{norm} ({settings.queries} queries)")
        else:
            parts.append(f"{name.upper()}-{norm} ({settings.steps} steps, {settings.restarts} restart(s))")
    return "worst case of " + " + ".join(parts) if len(parts) > 1 else parts[0]


def unchanged(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The identity attack: ``robust_correct`` with it says which examples are classified correctly."""
    return x


def certified_radii(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lipschitz_bound: float | torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Per example, ``lipschitz.certified_radius`` of the model's logits with L or the pairwise K, the
    model run in eval mode without gradients, ``batch_size`` examples at a time."""
    with preserved_state(model, mode=False), torch.no_grad():
        logits = torch.cat([model(xb) for xb, _ in _in_batches(x, y, batch_size, "certificates")])
    return lipschitz.certified_radius(logits, y, lipschitz_bound)


def eps_key(eps: float) -> str:
    """The JSON key of a radius: its shortest exact-enough decimal."""
    return f"{eps:.6g}"


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Share of examples whose input gradient of the cross-entropy is exactly zero."""
    zero = 0
    with preserved_state(model, mode=False), torch.enable_grad():
        for xb, yb in _in_batches(x, y, batch_size, "zero-gradient check"):
            xb = xb.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xb), yb, reduction="sum")
            grad = torch.autograd.grad(loss, xb)[0]
            zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    return zero / x.shape[0]


def masking_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: EvalSettings,
    accuracies: dict[str, dict[str, float]],
    certified: dict[str, float] | None,
    survivors: dict[str, dict[float, torch.Tensor]],
    generator: torch.Generator | None = None,
) -> tuple[list[MaskingCheck], dict[str, dict[str, float]]]:
    """The measurements behind the checks of ``checks`` and their verdicts, and the accuracies under twice
    the budget at the checked radii (random draws from ``generator``).

    ``accuracies[norm][eps_key]``: the robust accuracies; ``survivors[norm]``: per radius to check (the
    middle one first), whether each example is unbroken by the evaluation attack there.
    """
    n = x.shape[0]
    found = [checks.rises_with_eps(norm, [accuracies[norm][k] for k in sorted(accuracies[norm], key=float)], n)
             for norm in ("l2", "linf")]  # fmt: skip
    doubled: dict[str, dict[str, float]] = {norm: {} for norm in survivors}
    for norm, by_radius in survivors.items():
        for eps, alive in by_radius.items():
            base = int(alive.sum()) / n
            attack = build_eval_attack(norm, eps, settings, 2, generator)
            where = f"{norm} eps {radius_text(norm, eps)}, 2x budget"
            stronger = int(robust_correct(model, attack, x, y, settings.batch_size, where).sum()) / n
            doubled[norm][eps_key(eps)] = stronger
            found += [checks.rises_with_budget(norm, eps, base, stronger, n),
                      checks.not_converged(norm, eps, base, stronger)]  # fmt: skip
        eps, alive = next(iter(by_radius.items()))
        todo = alive.nonzero().squeeze(1)
        broken = 0
        if todo.numel() and "square" not in settings.members():
            square = Square(norm=norm, eps=eps, queries=settings.queries, generator=generator)
            where = f"{norm} eps {radius_text(norm, eps)}, Square"
            broken = int((~robust_correct(model, square, x[todo], y[todo], settings.batch_size, where)).sum())
        found.append(checks.square_beats_gradients(norm, eps, broken, int(todo.numel()), settings.queries, n))
    found.append(checks.zero_gradients(zero_gradient_share(model, x, y, settings.batch_size)))
    if certified is not None:
        found.append(checks.certified_above_robust(certified, accuracies["l2"]))
    return found, doubled


def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings, input_shape: Sequence[int]
) -> Robustness:
    """Clean, robust (l2 and linf) and certified-l2 accuracies of ``model`` on (x, y), the attacks that
    produced them, and the gradient-masking checks (``epoch``, ``weights`` and ``trained_to`` left unset).

    Robust accuracy at each radius: under the per-example worst case of the settings' attacks. Certified
    l2 accuracy: f_y - f_j > K[y, j] eps for every j at each l2 radius, K = ``lipschitz.pairwise_lipschitz``
    (at most sqrt(2) L, L = ``lipschitz.lipschitz_upper_bound``; None, with ``certified_note``, for a model
    with a layer without a Lipschitz rule). The model is left as it was found; the global RNG is not used.

    Args:
        model: maps x to logits (n, k).
        x: the test inputs, (n, *shape).
        y: their class indices, (n,).
        settings: the attacks, radii and checks.
        input_shape: the shape of one input, without the batch dimension, for the Lipschitz bound.

    Returns:
        A ``rundir.Robustness``; its accuracy dicts are keyed by ``eps_key(eps)``.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    clean_ok = robust_correct(model, unchanged, x, y, settings.batch_size, "clean accuracy")
    per_example = {"clean": pack_bits(clean_ok)}
    accuracies: dict[str, dict[str, float]] = {}
    survivors: dict[str, dict[float, torch.Tensor]] = {}
    for norm in ("l2", "linf"):
        radii = settings.l2_eps if norm == "l2" else settings.linf_eps
        accuracies[norm] = {}
        alive_at = {}
        for eps in radii:
            attack = build_eval_attack(norm, eps, settings, 1, generator)
            where = f"{norm} eps {radius_text(norm, eps)}"
            alive_at[eps] = robust_correct(model, attack, x, y, settings.batch_size, where)
            accuracies[norm][eps_key(eps)] = int(alive_at[eps].sum()) / len(y)
            per_example[f"{norm}/{eps_key(eps)}"] = pack_bits(alive_at[eps])
        if radii:
            middle = sorted(radii)[len(radii) // 2]
            checked = radii if settings.converge_every_radius else (middle,)
            survivors[norm] = {middle: alive_at[middle], **{eps: alive_at[eps] for eps in checked}}
    certified: dict[str, float] | None = None
    note = None
    try:
        bound, pairwise = lipschitz.lipschitz_bounds(model, input_shape)
    except TypeError as error:  # a layer without a Lipschitz rule: no certificate
        bound, note = None, str(error)
    else:
        radius = certified_radii(model, x, y, pairwise, settings.batch_size)
        certified = {}
        for e in settings.l2_eps:
            certified[eps_key(e)] = int((radius > e).sum()) / len(y)
            per_example[f"certified_l2/{eps_key(e)}"] = pack_bits(radius > e)
    lower = lipschitz.lipschitz_lower_bound(model, x[: settings.lipschitz_probe]) if settings.lipschitz_probe else None
    attacks = {norm: describe_attacks(norm, settings) for norm in ("l2", "linf") if accuracies[norm]}
    attacks["certified_l2"] = (
        "f_y - f_j > K[y, j] * eps for every j != y, K[y, j] = min(sqrt(2) L, ||w_y - w_j|| L_body): Gram-iteration"
        " Lipschitz upper bounds of the model (L) and of the layers before its last Linear one (L_body)"
    )
    found: list[MaskingCheck] | None = None
    doubled: dict[str, dict[str, float]] = {}
    if settings.checks:
        found, doubled = masking_checks(model, x, y, settings, accuracies, certified, survivors, generator)
    return Robustness(
        clean=int(clean_ok.sum()) / len(y), n=len(y), l2=accuracies["l2"], linf=accuracies["linf"],
        lipschitz_bound=bound, lipschitz_lower=lower,
        certified_l2=certified, attacks=attacks, settings=asdict(settings), doubled=doubled,
        masking_checks=None if found is None else tuple(found), certified_note=note, per_example=per_example,
    )  # fmt: skip


def summary(result: Robustness) -> list[str]:
    """The lines ``kernel-reg evaluate`` prints: accuracies in %, linf radii in units of 1/255."""

    def cells(norm: str, values: dict[str, float]) -> str:  # by radius, whatever order they were measured in
        ordered = sorted(values.items(), key=lambda item: float(item[0]))
        return ", ".join(f"{radius_text(norm, float(k))}: {100 * v:.1f}" for k, v in ordered)

    weights = f"{result.weights} weights, epoch {result.epoch}"
    lines = [f"clean accuracy {100 * result.clean:.1f}% on {result.n} test images ({weights})"]
    for norm, values in (("l2", result.l2), ("linf", result.linf)):
        if values:
            lines.append(f"  {norm} robust accuracy (%) at eps {cells(norm, values)}")
    if result.certified_l2 is not None:
        lines.append(f"  certified l2 accuracy (%) at eps {cells('l2', result.certified_l2)} "
                     f"(per pair of classes; Lipschitz bound {result.lipschitz_bound:.4g})")  # fmt: skip
        if result.lipschitz_lower is not None and result.lipschitz_bound:
            ratio = result.lipschitz_bound / max(result.lipschitz_lower, 1e-30)
            lines.append(f"  Lipschitz constant between {result.lipschitz_lower:.4g} (largest Jacobian norm "
                         f"found) and {result.lipschitz_bound:.4g} (guaranteed): the bound is {ratio:.3g}x the lower "
                         "one")  # fmt: skip
    else:
        lines.append(f"  no certificate: {result.certified_note}")
    for norm, doubled in result.doubled.items():
        if doubled:
            lines.append(f"  {norm} with twice the steps and restarts (%) at eps {cells(norm, doubled)}")
    if result.masking_checks is not None:
        lines += [f"  {c.detail}" for c in result.masking_checks if c.id == "square-beats-gradients"]
        fired = len(result.suspicious)
        lines.append(f"  gradient-masking checks: {len(result.masking_checks)} run, "
                     + (f"{fired} fired:" if fired else "none fired"))  # fmt: skip
    lines += [f"  WARNING: {name}" for name in result.suspicious]
    return lines


def published(run_dir: Path) -> bool:
    """A published run folder: it holds ``weights.pt`` and no checkpoint (what ``kernel-reg export`` leaves
    to commit); its records are what others check, so evaluation does not overwrite them unasked."""
    return (run_dir / WEIGHTS).is_file() and not (run_dir / CHECKPOINT).is_file()


def output_folder(run_dir: Path, out: Path | None, in_place: bool, record: str) -> Path:
    """Where an evaluation of ``run_dir`` writes ``record``: ``out`` when given, else the run folder itself,
    which a published folder allows only with ``in_place``. ValueError naming the remedy otherwise."""
    if out is not None:
        return out
    if published(run_dir) and not in_place:
        raise ValueError(
            f"{run_dir} holds published weights ({WEIGHTS}, no {CHECKPOINT}): its {record} is a published record; "
            "write the new one elsewhere with --out DIR, or over the published one with --in-place"
        )
    return run_dir


@contextlib.contextmanager
def measuring(
    run_dir: Path, record: str, purpose: str, which: str, out: str | Path | None, in_place: bool, **loading: Any
) -> Iterator[tuple[LoadedRun, Path]]:
    """(the run loaded by ``load_run(run_dir, which=which, **loading)``, the folder to write ``record``
    into: see ``output_folder``), holding the lock of that folder: the run folder itself, or one elsewhere
    (created), the run folder then only read (it may be read-only)."""
    check_choice("weights", which, ("best", "last"))
    folder = output_folder(run_dir, None if out is None else Path(out), in_place, record)
    read_config(run_dir)  # a run folder at all, before taking any lock
    with locked(folder, purpose, create=folder != run_dir):
        yield load_run(run_dir, which=which, **loading), folder


def evaluate_run(
    run_dir: str | Path,
    settings: EvalSettings,
    device: str = "auto",
    which: str = "best",
    log: Callable[[str], None] = lambda _: None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    in_place: bool = False,
    allow_other_data: bool = False,
) -> Robustness:
    """Evaluate a run folder's weights of best validation accuracy (``which="last"``, or a run without a
    validation set: its last weights) on its test set; ``log`` gets the summary lines before
    ``robustness.json`` is written, holding the lock of the folder written. A folder that is locked or not
    writable fails at once, before any work.

    Args:
        run_dir: the run folder.
        settings: the evaluation settings (``settings.n_test``: the test images).
        device: where to evaluate: "auto" (default: CUDA when available, else the CPU) or a device name.
        which: "best" (default) or "last", the weights.
        log: receives each summary line (default: discards them).
        data_dir: where the data are on this machine (default: the run's own setting).
        out: the folder to write ``robustness.json`` into (default: the run folder, which a published one,
            see ``published``, allows only with ``in_place``).
        in_place: overwrite a published run folder's record.
        allow_other_data: go on when the test data differ from the run's record (the difference is
            recorded in the result).

    Returns:
        The ``rundir.Robustness`` written, with ``epoch``, ``weights``, ``trained_to`` and ``data`` set.

    Raises:
        ValueError: for another ``which``, a device this machine does not have, a published folder without
            ``out`` or ``in_place``; DataMismatchError for other data.
        RunFolderError: for a folder that is not a run folder, is locked by another process or is not
            writable.
    """
    loading = dict(device=device, n_test=settings.n_test, data_dir=data_dir, allow_other_data=allow_other_data)
    with measuring(Path(run_dir), ROBUSTNESS, "kernel-reg evaluate", which, out, in_place, **loading) as (run, folder):
        run.model.requires_grad_(False)  # attacks differentiate inputs only (orthogonal layers then cache Q)
        result = evaluate_model(run.model, run.splits.test_x, run.splits.test_y, settings, run.splits.input_shape)
        result = dataclasses.replace(
            result, epoch=run.epoch, weights=run.weights, trained_to=run.trained_to, data=run.data,
            data_override=run.data_override,
        )  # fmt: skip
        for line in summary(result):
            log(line)
        write_robustness(folder, result)
    return result


def certify_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], input_shape: Sequence[int],
    batch_size: int = 500,
) -> Certification:  # fmt: skip
    """Clean and certified l2 accuracy of ``model`` on (x, y) at each radius, by the per-pair rule
    (f_y - f_j > K[y, j] eps for every j, K = ``lipschitz.pairwise_lipschitz``) and by the global one
    (f_y - max_j f_j > sqrt(2) L eps, L = ``lipschitz.lipschitz_upper_bound``), with per-example flags
    (``epoch`` and ``weights`` left unset). TypeError for a model with a layer without a Lipschitz rule."""
    for eps in radii:
        check_positive("eps", eps)
    bound, pairwise = lipschitz.lipschitz_bounds(model, input_shape)
    clean_ok = robust_correct(model, unchanged, x, y, batch_size, "clean accuracy")
    n = len(y)
    per_example = {"clean": pack_bits(clean_ok)}
    rules: dict[str, dict[str, float]] = {}
    for rule, constant in (("pairwise", pairwise), ("global", bound)):
        radius = certified_radii(model, x, y, constant, batch_size)
        rules[rule] = {eps_key(e): int((radius > e).sum()) / n for e in radii}
        per_example.update({f"{rule}/{eps_key(e)}": pack_bits(radius > e) for e in radii})
    return Certification(
        n=n, clean=int(clean_ok.sum()) / n, lipschitz_bound=bound, pairwise=rules["pairwise"],
        global_rule=rules["global"], weights="", epoch=-1, per_example=per_example,
    )  # fmt: skip


def certify_run(
    run_dir: str | Path,
    radii: Sequence[float],
    n_test: int | None = None,
    device: str = "auto",
    which: str = "best",
    log: Callable[[str], None] = lambda _: None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    in_place: bool = False,
    allow_other_data: bool = False,
) -> Certification:
    """``certify_model`` of a run folder's weights (``which``: "best", the default, as ``evaluate_run``, or
    "last") on its first
    ``n_test`` test images (None: all), written to ``certified.json`` as ``evaluate_run`` writes its
    record (same ``out``, ``in_place``, ``data_dir`` and ``allow_other_data``)."""
    loading = dict(device=device, n_test=n_test, data_dir=data_dir, allow_other_data=allow_other_data)
    with measuring(Path(run_dir), CERTIFIED, "kernel-reg certify", which, out, in_place, **loading) as (run, folder):
        result = certify_model(run.model, run.splits.test_x, run.splits.test_y, radii, run.splits.input_shape)
        result = dataclasses.replace(
            result, epoch=run.epoch, weights=run.weights, data=run.data, data_override=run.data_override
        )
        log(f"clean accuracy {100 * result.clean:.2f}% on {result.n} test images ({run.weights} weights, "
            f"epoch {run.epoch}); Lipschitz bound {result.lipschitz_bound:.6g}")  # fmt: skip
        for rule, values in (("per pair", result.pairwise), ("global", result.global_rule)):
            cells = ", ".join(f"{k}: {100 * v:.2f}" for k, v in values.items())
            log(f"  certified l2 accuracy (%), {rule} rule, at eps {cells}")
        write_certification(folder, result)
    return result
