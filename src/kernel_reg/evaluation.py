"""Evaluation of a model: clean accuracy, robust accuracy under configurable attacks, certified
accuracy, and the gradient-masking checks that say when a robust accuracy is not to be trusted; of a
run folder: ``robustness.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import spectral
from ._guards import check_choice, check_int, check_positive, preserved_state
from .attacks import APGD, PGDL2, PGDLinf, Square, WorstCase
from .rundir import ROBUSTNESS, atomic_write_text, load_run

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on (x, y)."""
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    loss, correct = 0.0, 0
    with preserved_state(model, mode=False), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    return loss / x.shape[0], correct / x.shape[0]


def robust_correct(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per example: still correctly classified after ``attack`` (each batch attacked once)."""
    correct = []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        x_adv = attack(model, xb, yb)
        with preserved_state(model, mode=False), torch.no_grad():
            correct.append(model(x_adv).argmax(1) == yb)
    return torch.cat(correct)


def robust_accuracy(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Accuracy on ``attack``'s adversarial examples."""
    return int(robust_correct(model, attack, x, y, batch_size).sum()) / x.shape[0]


ATTACK_NAMES = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square", "strong")


@dataclass(frozen=True)
class EvalSettings:
    """The robustness evaluation. Attack defaults are the original's (PGD, 100 steps, l2 step 0.5, linf
    step 0.01); ``attacks`` names the attacks whose per-example worst case gives each number ("strong":
    APGD-CE then APGD-T); ``checks`` runs the gradient-masking checks, whose convergence check (twice
    the steps and restarts) runs at the middle radius of each norm, or at every one with
    ``converge_every_radius``."""

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

    def members(self) -> list[str]:
        """The attack names, "strong" expanded, without repeats."""
        names = [m for a in self.attacks for m in (("apgd-ce", "apgd-t") if a == "strong" else (a,))]
        return list(dict.fromkeys(names))


def build_attack(name: str, norm: str, eps: float, settings: EvalSettings, scale: int = 1) -> Attack:
    """One evaluation attack by name; ``scale`` multiplies its steps (queries) and restarts."""
    steps, restarts = settings.steps * scale, settings.restarts * scale
    if name == "pgd":
        random = dict(random_start=restarts > 1, restarts=restarts)
        if norm == "l2":
            return PGDL2(eps, steps, settings.l2_step_size, **random)
        return PGDLinf(eps, steps, settings.linf_step_size, **random)
    if name == "square":
        return Square(norm, eps, settings.queries * scale)
    loss = "ce" if name == "apgd-ce" else "dlr"
    return APGD(norm, eps, loss, name == "apgd-t", settings.n_target_classes, steps, restarts)


def build_eval_attack(norm: str, eps: float, settings: EvalSettings, scale: int = 1) -> Attack:
    """The worst case over the settings' attacks at one radius."""
    members = [build_attack(name, norm, eps, settings, scale) for name in settings.members()]
    return members[0] if len(members) == 1 else WorstCase(members)


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


def eps_key(eps: float) -> str:
    """The JSON key of a radius: its shortest exact-enough decimal."""
    return f"{eps:.6g}"


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Share of examples whose input gradient of the cross-entropy is exactly zero."""
    zero = 0
    with preserved_state(model, mode=False), torch.enable_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].detach().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[start : start + batch_size], reduction="sum")
            grad = torch.autograd.grad(loss, xb)[0]
            zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    return zero / x.shape[0]


def _check(name: str, fired: bool, detail: str) -> dict:
    return dict(check=name, fired=bool(fired), detail=detail)


def masking_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: EvalSettings,
    result: dict,
    survivors: dict[str, dict[float, torch.Tensor]],
) -> list[dict]:
    """The checks that flag a robust accuracy as suspicious (gradient masking, a weak attack, a bug).

    ``survivors[norm]``: per radius to check (the middle one first), whether each example is unbroken by
    the evaluation attack there. The accuracies under twice the budget go to ``result["doubled"]``. A
    difference counts when it is more than one example.
    """
    n = x.shape[0]
    one = 1.0 / n + 1e-12
    checks = []
    for norm in ("l2", "linf"):
        accs = [result[norm][k] for k in sorted(result[norm], key=float)]
        rises = [f"{a:.3f} -> {b:.3f}" for a, b in zip(accs, accs[1:]) if b > a + one]
        checks.append(_check(f"{norm} robust accuracy rises with eps", rises, ", ".join(rises) or "monotone"))
    result["doubled"] = {norm: {} for norm in survivors}
    for norm, by_radius in survivors.items():
        for eps, alive in by_radius.items():
            base = int(alive.sum()) / n
            attack = build_eval_attack(norm, eps, settings, scale=2)
            stronger = robust_accuracy(model, attack, x, y, settings.batch_size)
            result["doubled"][norm][eps_key(eps)] = stronger
            checks.append(
                _check(
                    f"{norm} accuracy rises with more steps and restarts",
                    stronger > base + one,
                    f"eps {eps:.4g}: {base:.3f} with the budget, {stronger:.3f} with twice the steps and restarts",
                )
            )
            checks.append(
                _check(
                    f"{norm} attack not converged (twice the budget lowers accuracy by over 1 point)",
                    stronger < base - 0.01,
                    f"eps {eps:.4g}: {base:.3f} -> {stronger:.3f}",
                )
            )
        eps, alive = next(iter(by_radius.items()))
        todo = alive.nonzero().squeeze(1)
        broken = 0
        if todo.numel() and "square" not in settings.members():
            square = Square(norm, eps, settings.queries)
            broken = int((~robust_correct(model, square, x[todo], y[todo], settings.batch_size)).sum())
        checks.append(
            _check(
                f"{norm} score-based attack beats the gradient attacks",
                broken > max(1, math.ceil(0.01 * n)),
                f"eps {eps:.4g}: Square ({settings.queries} queries) broke {broken} of the {todo.numel()} "
                "examples the gradient attacks left",
            )
        )
    share = zero_gradient_share(model, x, y, settings.batch_size)
    checks.append(_check("zero input gradients", share > 0.1, f"{100 * share:.1f}% of examples have a zero gradient"))
    if result.get("certified_l2") is not None:
        above = [
            f"eps {k}: certified {c:.3f} > robust {result['l2'][k]:.3f}"
            for k, c in result["certified_l2"].items()
            if k in result["l2"] and c > result["l2"][k]
        ]
        checks.append(_check("certified accuracy exceeds robust accuracy (a bug)", above, "; ".join(above) or "no"))
    return checks


def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings, input_shape: Sequence[int]
) -> dict:
    """Clean, robust (l2 and linf) and certified-l2 accuracies of ``model`` on (x, y), the attacks that
    produced them, and the gradient-masking checks."""
    _, clean = accuracy(model, x, y, settings.batch_size)
    result: dict = dict(clean=clean, n=len(y))
    survivors: dict[str, dict[float, torch.Tensor]] = {}
    for norm in ("l2", "linf"):
        radii = settings.l2_eps if norm == "l2" else settings.linf_eps
        result[norm] = {}
        alive_at = {}
        for eps in radii:
            alive_at[eps] = robust_correct(model, build_eval_attack(norm, eps, settings), x, y, settings.batch_size)
            result[norm][eps_key(eps)] = int(alive_at[eps].sum()) / len(y)
        if radii:
            middle = sorted(radii)[len(radii) // 2]
            checked = radii if settings.converge_every_radius else (middle,)
            survivors[norm] = {middle: alive_at[middle], **{eps: alive_at[eps] for eps in checked}}
    try:
        lipschitz = spectral.lipschitz_upper_bound(model, input_shape)
    except TypeError as error:  # a layer without a Lipschitz rule: no certificate
        result.update(lipschitz_bound=None, certified_l2=None, certified_note=str(error))
    else:
        certified = {eps_key(e): spectral.certified_accuracy(model, x, y, e, lipschitz) for e in settings.l2_eps}
        result.update(lipschitz_bound=lipschitz, certified_l2=certified)
    result["attacks"] = {norm: describe_attacks(norm, settings) for norm in ("l2", "linf") if result[norm]}
    result["attacks"]["certified_l2"] = "margin > sqrt(2) * L * eps, L the Gram-iteration Lipschitz upper bound"
    if settings.checks:
        result["masking_checks"] = masking_checks(model, x, y, settings, result, survivors)
        result["suspicious"] = list(dict.fromkeys(c["check"] for c in result["masking_checks"] if c["fired"]))
    return result


def evaluate_run(run_dir: str | Path, settings: EvalSettings, device: str = "auto", which: str = "best") -> dict:
    """Evaluate a run folder's weights of best validation accuracy (``which="last"``: its last weights)
    on its test set; writes ``robustness.json`` there."""
    run_dir = Path(run_dir)
    _, model, splits, epoch = load_run(run_dir, device, n_test=settings.n_test, which=which)
    result = evaluate_model(model, splits.test_x, splits.test_y, settings, splits.input_shape)
    result.update(epoch=epoch, weights=which, settings=asdict(settings))
    atomic_write_text(run_dir / ROBUSTNESS, json.dumps(result, indent=2))
    return result
