"""Penalties on deformations: ||f||_tau^2 (stability to random deformations) and ||D_tau f||^2 (gradients
along their tangents)."""

from __future__ import annotations

import torch
from torch import nn

from ..arguments import check_int, check_logits
from ..deformations import RandomDeformation, deform, tangent
from ..deprecation import old_arguments
from ..distributed import SINGLE, Group
from .base import (
    SupremumPenalty,
    _check_images,
    _selected_class_gradients,
    check_method,
    class_input_gradients,
    finite_difference,
)


def _draw_fields(sampler: RandomDeformation, group: Group, x: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` random displacement fields per example of the image batch x: (n, m, H, W, 2)."""
    height, width = x.shape[-2:]

    def sample(count: int) -> torch.Tensor:
        return sampler.sample(count * m, height, width, device=x.device, dtype=x.dtype).view(count, m, height, width, 2)

    return group.draw(sample, x.shape[0])


class DeformationStabilityPenalty(SupremumPenalty):
    """||f||_tau^2, stability to deformations (Bietti, Mialon, Chen and Mairal, ICML 2019):

        lmbda * sum_j max_{i, r} (f_j(T_{v_ir} x_i) - f_j(x_i))^2

    over ``deformations`` random fields v_ir per example (drawn by ``sampler`` from the global RNG, see
    ``deformations.RandomDeformation``), T_v the deformation of ``deformations.deform``. Every example is
    first deformed by its first field, in one forward pass of n images; the other fields follow in passes
    of at most ``chunk_size`` deformed images. With ``candidates=m``, the other fields are tried only on
    the m examples per class that the first field moved most: exact when m >= n.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
        deformations: random fields per example, >= 1 (default 4).
        sampler: the field distribution; None (default): ``RandomDeformation()``.
        chunk_size: the most deformed images per forward pass after the first, >= 1; None (default): n.
        candidates: m, the examples per class that get the other fields, >= 1; None (default): all n.
        group: the process group (default: one process; see ``SupremumPenalty``); on several, the fields
            are drawn for the global batch.

    Shape:
        x: images (n, C, H, W); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Raises:
        ValueError: for inputs that are not image batches (n, C, H, W).

    Example:
        >>> penalty = DeformationStabilityPenalty(lmbda=0.1, deformations=4, sampler=RandomDeformation(amplitude=1.0))
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
    """

    name = "stability"

    @old_arguments(("lmbda", "deformations", "sampler", "chunk_size"))
    def __init__(
        self,
        *,
        lmbda: float = 0.1,
        deformations: int = 4,
        sampler: RandomDeformation | None = None,
        chunk_size: int | None = None,
        candidates: int | None = None,
        group: Group = SINGLE,
    ) -> None:
        super().__init__(lmbda=lmbda, group=group)
        self.deformations = check_int("deformations", deformations)
        self.sampler = sampler or RandomDeformation()
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size)
        self.candidates = None if candidates is None else check_int("candidates", candidates)

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ValueError unless x is a batch of images (n, C, H, W)."""
        _check_images(type(self).__name__, x)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The largest change max_{i, r} (f_j(T_{v_ir} x_i) - f_j(x_i))^2 of each class (k,), and its example
        (k, C, H, W) and displacement field (k, H, W, 2)."""
        n, m = x.shape[0], self.deformations
        fields = _draw_fields(self.sampler, self.group, x, m)  # (n, m, H, W, 2): field r of example i
        with torch.no_grad():
            clean = check_logits(model(x), n)  # (n, k)
            k = clean.shape[1]
            changes = torch.full((n, m, k), -1.0, device=x.device, dtype=clean.dtype)  # -1: not tried
            changes[:, 0] = (model(deform(x, fields[:, 0])) - clean).pow(2)
            rows = torch.arange(n, device=x.device)
            if self.candidates is not None and self.candidates < n:
                rows = changes[:, 0].topk(self.candidates, dim=0).indices.flatten()
                rows = torch.unique(rows)
            if m > 1:
                moved = deform(x[rows].repeat_interleave(m - 1, dim=0), fields[rows, 1:].flatten(0, 1))
                rest = torch.cat([model(chunk) for chunk in torch.split(moved, self.chunk_size or n)])
                changes[rows, 1:] = (rest.view(len(rows), m - 1, k) - clean[rows, None]).pow(2)
        scores, winners = changes.flatten(0, 1).max(0)  # (k,), indices i * m + r
        examples, which = winners // m, winners % m
        return scores, (x[examples], fields[examples, which])

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(f_j(T_v x_{i_j}) - f_j(x_{i_j}))^2 for each class j (k,)."""
        x_sel, fields = winners
        k = x_sel.shape[0]
        logits = model(torch.cat([deform(x_sel, fields), x_sel]))
        out: torch.Tensor = (logits[:k].diagonal() - logits[k:].diagonal()).pow(2)
        return out


class TangentGradientPenalty(SupremumPenalty):
    """||D_tau f||^2, gradients along deformation tangents (Bietti, Mialon, Chen and Mairal, ICML 2019):

        lmbda * sum_j max_i sum_m <grad_x f_j(x_i), t_im>^2,

    t_im the tangent vectors of ``deformations`` random fields per example (drawn by ``sampler`` from the
    global RNG; see ``deformations.tangent``). The search takes the per-class input gradients of the batch
    (one forward, k input-only backward passes); the k winners are recomputed with a graph for double
    backpropagation, with their tangents.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
        deformations: random fields (tangents) per example, >= 1 (default 4).
        sampler: the field distribution; None (default): ``RandomDeformation()``.
        method: "exact" (default: double backpropagation) or "finite-difference": the same value, its
            parameter gradient from a finite difference of step h along each unit tangent (Finlay and
            Oberman, 2019; ``base.finite_difference``), no double backward.
        h: the finite-difference step, > 0 (default 1.0; bench/README.md gives the cosine to the exact
            parameter gradient per h).
        group: the process group (default: one process; see ``SupremumPenalty``); on several, the fields
            are drawn for the global batch.

    Shape:
        x: images (n, C, H, W); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Raises:
        ValueError: for inputs that are not image batches (n, C, H, W).

    Example:
        >>> penalty = TangentGradientPenalty(lmbda=0.1, deformations=4)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
    """

    name = "gradtangent"

    @old_arguments(("lmbda", "deformations", "sampler"))
    def __init__(
        self,
        *,
        lmbda: float = 0.1,
        deformations: int = 4,
        sampler: RandomDeformation | None = None,
        method: str = "exact",
        h: float = 1.0,
        group: Group = SINGLE,
    ) -> None:
        super().__init__(lmbda=lmbda, group=group)
        self.deformations = check_int("deformations", deformations)
        self.sampler = sampler or RandomDeformation()
        self.method, self.h = check_method(method, h)

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ValueError unless x is a batch of images (n, C, H, W)."""
        _check_images(type(self).__name__, x)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Per class the largest sum_m <grad_x f_j(x_i), t_im>^2 (k,), its example, its tangents (k, m, D) and
        the inner products there (k, m)."""
        tangents = tangent(x, _draw_fields(self.sampler, self.group, x, self.deformations)).flatten(2)  # (n, m, D)
        _, grads = class_input_gradients(model, x)  # (n, k, *shape)
        products = torch.einsum("nkd,nmd->nkm", grads.flatten(2), tangents)  # (n, k, m)
        best, winners = products.pow(2).sum(2).max(0)  # (k,)
        classes = torch.arange(len(winners), device=x.device)
        return best, (winners, tangents[winners], products[winners, classes])

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """sum_m <grad_x f_j(x_{i_j}), t_m>^2 for each class j (k,): by double backpropagation, or
        ("finite-difference") with the gradient of ``finite_difference`` along each unit tangent,
        <grad f, t> ~ ||t|| (f(x + h t / ||t||) - f(x)) / h (k (m + 1) forward passes, no double backward)."""
        examples, tangents, products = winners
        if self.method == "exact":
            selected = _selected_class_gradients(model, x[examples]).flatten(1)  # (k, D)
            return torch.einsum("kd,kmd->km", selected, tangents).pow(2).sum(1)
        k, m = tangents.shape[:2]
        lengths = tangents.norm(dim=2)  # (k, m)
        units = (tangents / lengths.clamp_min(torch.finfo(tangents.dtype).tiny)[..., None]).view(k, m, *x.shape[1:])
        x_sel = x[examples]
        moved = (x_sel[:, None] + self.h * units).flatten(0, 1)  # (k m, *shape)
        logits = model(torch.cat([moved, x_sel]))
        classes = torch.arange(k, device=x.device)
        plus = logits[: k * m].view(k, m, -1)[classes, :, classes]  # f_j(x_j + h t_jm / ||t_jm||), (k, m)
        base = logits[k * m :][classes, classes][:, None]  # f_j(x_j), (k, 1)
        return finite_difference(products.pow(2).sum(1), 2 * products * lengths, plus, base, self.h)
