"""Metrics of a model over a data set, batch by batch: accuracy, per-example robustness under an attack,
certified radii, the share of zero input gradients. Each leaves the model as it found it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .. import lipschitz
from ..attacks import AttackFn
from ..guard import preserved_state
from ..progress import progress
from .data import batches
from .journal import Journal


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
    model: nn.Module,
    attack: AttackFn,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    description: str = "attack",
    journal: Journal | None = None,
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
        description: the progress bar's label (default "attack"), and the stage's name in ``journal``.
        journal: where each batch's result is kept and, for a resumed evaluation, found (default: none).

    Returns:
        A bool tensor (n,) on x's device: True where the attack failed.
    """

    def unbroken(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        x_adv = attack(model, xb, yb)
        with preserved_state(model, mode=False), torch.no_grad():
            return model(x_adv).argmax(1) == yb

    correct = []
    for index, (xb, yb) in enumerate(_in_batches(x, y, batch_size, description)):
        if journal is None:
            correct.append(unbroken(xb, yb))
        else:
            correct.append(journal.batch(description, index, partial(unbroken, xb, yb)).to(yb.device))
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
