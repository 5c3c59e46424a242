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
    """Run ``attacks`` in turn, each on the examples no earlier one has misclassified; returns the
    adversarial batch and how many examples each attack broke first (by its name)."""
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
    evaluation): each attack runs only on the examples still correctly classified, so the result is in
    the ball of whichever attack produced it."""

    def __init__(self, *, attacks: Sequence[Attack]) -> None:
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise ValueError(f"attacks must be a non-empty list of kernel_reg attacks, got {attacks!r}")
        self.attacks = list(attacks)
        self.name = " + ".join(a.name for a in self.attacks)

    def check_inputs(self, x: torch.Tensor) -> None:
        for attack in self.attacks:
            attack.check_inputs(x)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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
    """APGD-CE, then APGD-T (targeted DLR), then optionally Square, each on what is still unbroken."""
    members: list[Attack] = [
        APGD(norm=norm, eps=eps, loss="ce", steps=steps, restarts=restarts, clip=clip, generator=generator),
        APGD(norm=norm, eps=eps, loss="dlr", targeted=True, n_target_classes=n_target_classes, steps=steps,
             clip=clip, generator=generator),
    ]  # fmt: skip
    if square:
        members.append(Square(norm=norm, eps=eps, queries=queries, clip=clip, generator=generator))
    return WorstCase(attacks=members)
