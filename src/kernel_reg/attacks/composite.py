"""Attacks made of attacks: the per-example worst case, and the strong evaluation (APGD-CE + APGD-T)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..arguments import check_logits
from ..guard import preserved_state
from .apgd import APGD
from .base import Attack
from .square import Square


def worst_case(
    model: nn.Module, attacks: Sequence[Attack], x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, int]]:
    """The per-example worst case over ``attacks``: each runs in turn on the examples that the model still
    classifies correctly (clean, and at every earlier attack's point), as AutoAttack's standard evaluation
    (Croce & Hein, ICML 2020).

    All inputs are checked by every attack before any runs; the model is evaluated in eval mode and left as
    it was found.

    Args:
        model: maps x to logits (n, k).
        attacks: the attacks, in order.
        x: the inputs, (n, *shape).
        y: their class indices, (n,).

    Shape:
        x_adv: (n, *shape), like x.

    Returns:
        (x_adv, breakdown): x_adv holds, per example, the point of the first attack that misclassified it
        (x itself where none did, or where the clean input is already misclassified); ``breakdown`` maps
        each attack's name to the number of examples it broke first (attacks of the same name summed,
        0 for an attack that found nothing left to attack).
    """
    x, y = x.detach(), y.detach()
    for attack in attacks:  # fail before any attack runs, even if no example is left for one of them
        attack.check_inputs(x)
    with preserved_state(model, mode=False), torch.no_grad():
        robust = check_logits(model(x), x.shape[0]).argmax(1) == y
    x_adv = x.clone()
    breakdown: dict[str, int] = {}
    for attack in attacks:
        todo = robust.nonzero().squeeze(1)
        if todo.numel() == 0:
            breakdown[attack.name] = breakdown.get(attack.name, 0)
            continue
        candidate = attack(model, x[todo], y[todo])
        with preserved_state(model, mode=False), torch.no_grad():
            fooled = model(candidate).argmax(1) != y[todo]
        x_adv[todo[fooled]] = candidate[fooled]
        robust[todo[fooled]] = False
        breakdown[attack.name] = breakdown.get(attack.name, 0) + int(fooled.sum())
    return x_adv, breakdown


class WorstCase(Attack):
    """The per-example worst case over several attacks, itself an attack (as AutoAttack's standard
    evaluation, Croce & Hein, ICML 2020): each attack runs only on the examples still correctly classified,
    so the result is in the ball of whichever attack produced it (see ``worst_case``). Its name joins the
    attacks' names with " + ".

    Args (keyword-only):
        attacks: a non-empty sequence of ``Attack`` instances, run in this order.

    Shape:
        x: (n, *shape); y: (n,) class indices; model(x): logits (n, k).

    Returns:
        x_adv (n, *shape), detached: per example, the first attack's point that the model misclassifies,
        else x.

    Raises:
        ValueError: for an empty ``attacks`` or one that is not an ``Attack``.

    Example:
        >>> fast = attacks.PGD(norm="l2", eps=0.5, steps=10)
        >>> attack = attacks.WorstCase(attacks=[fast, attacks.APGD(norm="l2", eps=0.5)])
        >>> x_adv = attack(model, x, y)
    """

    def __init__(self, *, attacks: Sequence[Attack]) -> None:
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise ValueError(f"attacks must be a non-empty list of kernel_reg attacks, got {attacks!r}")
        self.attacks = list(attacks)
        self.name = " + ".join(a.name for a in self.attacks)

    def check_inputs(self, x: torch.Tensor) -> None:
        """Every member's ``check_inputs``."""
        for attack in self.attacks:
            attack.check_inputs(x)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``worst_case(model, self.attacks, x, y)``'s adversarial batch."""
        return worst_case(model, self.attacks, x, y)[0]


def strong(
    *,
    norm: str,
    eps: float,
    square: bool = False,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    queries: int = 5000,
    clip: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> WorstCase:
    """The strong evaluation (Croce & Hein, ICML 2020): APGD-CE, then APGD-T (targeted DLR), then optionally
    Square (Andriushchenko et al., ECCV 2020), each on the examples still unbroken: AutoAttack's
    standard evaluation less FAB-T when ``square``.

    Args (keyword-only):
        norm: "l2" or "linf", the ball.
        eps: its radius, > 0.
        square: add the Square attack last (default False).
        steps: APGD iterations per run, >= 1 (default 100).
        restarts: restarts of APGD-CE and of APGD-T for each target class, >= 1 (default 1).
        n_target_classes: APGD-T's number of target classes, >= 1 (default 9; at most k - 1 are used).
        queries: Square's query budget, >= 1 (default 5000).
        clip: the input range (lo, hi) x_adv stays in, or None (default (0, 1)).
        generator: the source of every member's random draws (None, default: the global RNG).

    Shape:
        x: (n, *shape) (images (n, C, H, W) with ``square``); y: (n,); model(x): logits (n, k), k >= 4.

    Returns:
        A ``WorstCase`` attack, named "APGD-CE + APGD-T" (" + Square").

    Example:
        >>> attack = attacks.strong(norm="l2", eps=0.5)
        >>> x_adv = attack(model, x, y)
    """
    members: list[Attack] = [
        APGD(norm=norm, eps=eps, loss="ce", steps=steps, restarts=restarts, clip=clip, generator=generator),
        APGD(norm=norm, eps=eps, loss="dlr", targeted=True, n_target_classes=n_target_classes, steps=steps,
             restarts=restarts, clip=clip, generator=generator),
    ]  # fmt: skip
    if square:
        members.append(Square(norm=norm, eps=eps, queries=queries, clip=clip, generator=generator))
    return WorstCase(attacks=members)
