"""The gradient-masking checks: each says when a robust accuracy is not to be trusted.

A robust accuracy is an upper bound on the true one: it is only as good as the attacks that produced it.
Each check below compares the evaluation with a measurement that a sound evaluation must agree with, and
fires when they disagree by more than its threshold; a fired check names a problem to look at (gradient
masking, an attack that has not converged, a bug), never a result. As AutoAttack's flags, one function
per check, each with its threshold and the reason for it. A difference of one example is noise: the
comparisons of accuracies allow it.
"""

from __future__ import annotations

import math

from .rundir import MaskingCheck

CONVERGENCE_DROP = 0.01  # twice the steps and restarts lowering the accuracy by more: the attack had not converged
SQUARE_SHARE = 0.01  # Square breaking more than this share (and over one example) of the survivors
ZERO_GRADIENT_SHARE = 0.1  # more examples than this with an exactly zero input gradient
SQUARE_CHECK = "score-based attack beats the gradient attacks"  # after the norm: "l2 score-based ..."


def radius_text(norm: str, eps: float) -> str:
    """A radius as its flag takes it: '0.5' for l2, '8/255' for linf."""
    return f"{eps * 255:.4g}/255" if norm == "linf" else f"{eps:.4g}"


def _one_example(n: int) -> float:
    return 1.0 / n + 1e-12


def rises_with_eps(norm: str, accuracies: list[float], n: int) -> MaskingCheck:
    """Robust accuracy must not rise with the radius: the ball of a larger radius holds the smaller one,
    so a higher accuracy there means the attack found less in a larger set (``accuracies`` by radius)."""
    rises = [f"{a:.3f} -> {b:.3f}" for a, b in zip(accuracies, accuracies[1:]) if b > a + _one_example(n)]
    return MaskingCheck(f"{norm} robust accuracy rises with eps", bool(rises), ", ".join(rises) or "monotone", norm)


def rises_with_budget(norm: str, eps: float, accuracy: float, doubled: float, n: int) -> MaskingCheck:
    """Twice the steps and restarts must not raise the robust accuracy: the stronger attack includes the
    weaker one's chances, so a rise means randomness or a bug decides the number."""
    return MaskingCheck(
        f"{norm} accuracy rises with more steps and restarts",
        doubled > accuracy + _one_example(n),
        f"eps {radius_text(norm, eps)}: {accuracy:.3f} with the budget, {doubled:.3f} with twice the steps and "
        "restarts",
        norm, eps, {"accuracy": accuracy, "doubled": doubled},
    )  # fmt: skip


def not_converged(norm: str, eps: float, accuracy: float, doubled: float) -> MaskingCheck:
    """Twice the steps and restarts lowering the robust accuracy by over ``CONVERGENCE_DROP``: the attack had
    not converged, and the reported number is too high by at least that much."""
    return MaskingCheck(
        f"{norm} attack not converged (twice the budget lowers accuracy by over {100 * CONVERGENCE_DROP:g} point)",
        doubled < accuracy - CONVERGENCE_DROP,
        f"eps {radius_text(norm, eps)}: {accuracy:.3f} -> {doubled:.3f}",
        norm, eps, {"accuracy": accuracy, "doubled": doubled},
    )  # fmt: skip


def square_beats_gradients(norm: str, eps: float, broken: int, survivors: int, queries: int, n: int) -> MaskingCheck:
    """A score-based attack (Square, no gradients) breaking more than ``SQUARE_SHARE`` of the examples the
    gradient attacks left (and more than one): the gradients mislead the attacks, the classic sign of
    gradient masking."""
    return MaskingCheck(
        f"{norm} {SQUARE_CHECK}",
        broken > max(1, math.ceil(SQUARE_SHARE * n)),
        f"eps {radius_text(norm, eps)}: Square ({queries} queries) broke {broken} of the {survivors} examples "
        "the gradient attacks left",
        norm, eps, {"broken": broken, "survivors": survivors, "queries": queries},
    )  # fmt: skip


def zero_gradients(share: float) -> MaskingCheck:
    """More than ``ZERO_GRADIENT_SHARE`` of the examples with an exactly zero input gradient: gradient
    attacks have nothing to follow there (saturated softmax, quantisation, a non-differentiable layer)."""
    return MaskingCheck(
        "zero input gradients", share > ZERO_GRADIENT_SHARE, f"{100 * share:.1f}% of examples have a zero gradient",
        values={"share": share},
    )  # fmt: skip


def certified_above_robust(certified: dict[str, float], robust: dict[str, float]) -> MaskingCheck:
    """Certified accuracy above the attacked one at the same radius is impossible (a certificate holds for
    every point of the ball, the attack's included): a bug, in the bound or in the evaluation."""
    above = [
        f"eps {k}: certified {c:.3f} > robust {robust[k]:.3f}"
        for k, c in certified.items()
        if k in robust and c > robust[k]
    ]
    return MaskingCheck("certified accuracy exceeds robust accuracy (a bug)", bool(above), "; ".join(above) or "no")
