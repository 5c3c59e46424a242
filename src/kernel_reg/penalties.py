"""Lower bounds of the RKHS norm of a classifier, used as penalties.

Every penalty is a callable ``penalty(model, x, y) -> scalar tensor``, already multiplied by its
weight, to be added to the task loss; gradients flow to the model's parameters. f denotes the model
(inputs -> logits of k classes, k read from the output), f_j its j-th logit, x_i the i-th example.

Supremum penalties (||grad f||^2, ||f||_delta^2, ||f||_tau^2, ||D_tau f||^2) work in two passes: a
search without a parameter graph finds, for each class j, the maximising example; the penalty is then
recomputed, with its graph, on those k examples only. The argmax is a constant, so this is the exact
gradient of the definition, at a fraction of the cost of a graph through the whole search.

Per-example input gradients are gradients of a sum over the batch, which is exact when examples do
not interact (no BatchNorm in train mode). Penalties run the model in the caller's train/eval mode and
leave BatchNorm running statistics unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import check_choice, check_int, check_logits, check_nonnegative, check_positive, describe
from .deformations import RandomDeformation, deform, tangent
from .distributed import SINGLE, Group
from .guard import preserved_state
from .tensors import normalize_l2, project_l2, randn


class Penalty:
    """The contract of every penalty: ``penalty(model, x, y) -> lmbda * value``, a scalar to add to the loss.

    Args (keyword-only): ``lmbda``, the weight (>= 0), and the penalty's own hyperparameters.
    Shape: x (n, *shape), the inputs; y (n,) class indices (used by the penalties that need labels);
        the model maps x to logits (n, k).
    Returns: a scalar tensor in the model's dtype, with a graph to the model's parameters, also when
        called under ``torch.no_grad()``.

    The model runs in the caller's train/eval mode; its flags, BatchNorm statistics and the caller's
    tensors are left as they were. ``name`` names the penalty; ``repr`` shows its hyperparameters.
    Subclasses implement ``unweighted``.
    """

    name = "penalty"

    def __init__(self, *, lmbda: float) -> None:
        self.lmbda = check_nonnegative("lmbda", lmbda)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x, y)
        with torch.enable_grad(), preserved_state(model):
            return self.lmbda * self.unweighted(model, x.detach(), None if y is None else y.detach())

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """ValueError for inputs the penalty is not defined on."""

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The penalty without its weight (model and tensors already guarded)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return describe(self)


def _check_images(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{name} deforms images: x must be a batch (n, C, H, W), got shape {tuple(x.shape)}; "
            "reshape flat inputs to images or use a penalty without deformations"
        )


class SupremumPenalty(Penalty):
    """lmbda * sum_j max_i s_j(x_i): a supremum over the batch for each class j.

    Two passes: ``search`` finds, without a parameter graph, each class's maximiser and its score
    (k,); ``terms`` recomputes the k winning terms with their graph. The argmax is a constant, so this is
    the exact gradient of the definition at a fraction of the cost of a graph through the whole search.
    On several processes (``group``, see ``distributed.Group``) the maximiser is sought over the global
    batch.
    """

    def __init__(self, *, lmbda: float, group: Group = SINGLE) -> None:
        super().__init__(lmbda=lmbda)
        self.group = group

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(per class, the largest score (k,); what ``terms`` needs to recompute the winners)."""
        raise NotImplementedError

    def terms(self, model: nn.Module, x: torch.Tensor, winners: Any) -> torch.Tensor:
        """The winning term of each class (k,), with its graph."""
        raise NotImplementedError

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        scores, winners = self.search(model, x)
        return self.group.supremum_sum(self.terms(model, x, winners), scores.detach())

    def class_terms(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The unweighted winning term of each class on this batch (k,), on this process."""
        self.check_inputs(x, None)
        with torch.enable_grad(), preserved_state(model):
            x = x.detach()
            return self.terms(model, x, self.search(model, x)[1])


def class_input_gradients(
    model: nn.Module, x: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, k) and per-class input gradients (n, k, *x.shape[1:]): grads[i, j] = grad_x f_j(x_i).

    One forward pass, then k input-only backward passes on the retained graph (no parameter
    gradients are formed unless ``create_graph``).
    """
    x_in = x.detach().requires_grad_(True)
    logits = check_logits(model(x_in), x.shape[0])
    k = logits.shape[1]
    cotangents = torch.eye(k, dtype=logits.dtype, device=logits.device)
    grads = [
        torch.autograd.grad(
            logits,
            x_in,
            grad_outputs=cotangents[j].expand_as(logits),
            retain_graph=create_graph or j < k - 1,
            create_graph=create_graph,
        )[0]
        for j in range(k)
    ]
    return logits, torch.stack(grads, dim=1)


def _selected_class_gradients(model: nn.Module, x_selected: torch.Tensor) -> torch.Tensor:
    """grad_x f_j(x_selected[j]) for j = 0..k-1, with a graph for double backpropagation: (k, *shape)."""
    x_in = x_selected.detach().requires_grad_(True)
    logits = check_logits(model(x_in), x_in.shape[0])
    return torch.autograd.grad(logits.diagonal().sum(), x_in, create_graph=True)[0]


def _own_class_logits(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """f_{classes[c]}(inputs[c, i]) for inputs (c, n, *shape): one logit per copy of the batch, (c, n)."""
    c, n = inputs.shape[:2]
    logits = model(inputs.flatten(0, 1)).view(c, n, -1)
    return logits.gather(2, classes.view(c, 1, 1).expand(c, n, 1)).squeeze(2)


def _draw_fields(sampler: RandomDeformation, group: Group, x: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` random displacement fields per example of the image batch x: (n, m, H, W, 2)."""
    height, width = x.shape[-2:]

    def sample(count: int) -> torch.Tensor:
        return sampler.sample(count * m, height, width, device=x.device, dtype=x.dtype).view(count, m, height, width, 2)

    return group.draw(sample, x.shape[0])


class GradientPenalty(SupremumPenalty):
    """||grad f||^2, the supremum gradient penalty.

        lmbda * sum_j ||grad_x f_j(x_{i_j})||_2^2,  i_j = argmax_i ||grad_x f_j(x_i)||_2^2.

    The search takes the per-class input gradients of the batch (one forward, k input-only backward
    passes); the k winners are recomputed with a graph for double backpropagation.
    """

    name = "gradient-penalty"

    def __init__(self, *, lmbda: float = 0.1, group: Group = SINGLE) -> None:
        super().__init__(lmbda=lmbda, group=group)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, grads = class_input_gradients(model, x)  # (n, k, *shape)
        scores, winners = grads.flatten(2).pow(2).sum(2).max(0)  # (k,) each
        return scores, winners

    def terms(self, model: nn.Module, x: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
        return _selected_class_gradients(model, x[winners]).flatten(1).pow(2).sum(1)


class AdversarialPerturbationPenalty(SupremumPenalty):
    """||f||_delta^2, the adversarial perturbation penalty.

    For each class j and example i, d_ij approximately maximises f_j(x_i + d) - f_j(x_i) over
    ||d||_2 <= eps by ``steps`` normalised gradient steps of size ``step_size`` (default 1.5 eps / steps)
    from d = 0, each followed by projection on the ball. With i_j the example of largest increase,

        lmbda * sum_j (f_j(x_{i_j} + d_{i_j j}) - f_j(x_{i_j}))^2,

    gradients flowing through both terms.

    The first step, from d = 0, needs only the per-class input gradients of the clean batch (one forward,
    k input-only backward passes); the other steps forward k copies of the batch, ``chunk_size`` examples
    at a time (default: the batch size, one class per pass). With ``candidates=m``, only the m examples of
    steepest ascent per class (largest ||grad_x f_j(x_i)||) continue after the first step: the search
    then costs about m / n of the exact one, and is exact when m >= n.
    """

    name = "adv-perturbation"

    def __init__(
        self,
        *,
        lmbda: float = 1.0,
        eps: float = 1.0,
        steps: int = 5,
        step_size: float | None = None,
        chunk_size: int | None = None,
        candidates: int | None = None,
        group: Group = SINGLE,
    ) -> None:
        super().__init__(lmbda=lmbda, group=group)
        self.eps = check_positive("eps", eps)
        self.steps = check_int("steps", steps)
        self.step_size = 1.5 * self.eps / self.steps if step_size is None else check_positive("step_size", step_size)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size)
        self.candidates = None if candidates is None else check_int("candidates", candidates)

    def _step(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One normalised ascent step and projection, for a batch of (pair, *shape) perturbations."""
        return project_l2(delta + self.step_size * normalize_l2(grad), self.eps)

    def _ascend(self, model: nn.Module, x_pool: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The remaining steps for pairs (class j, x_pool[j, i]) from ``delta`` (k, m, *shape): the final
        perturbations and f_j(x_pool[j, i] + d) (k, m)."""
        k, m = x_pool.shape[:2]
        classes_per_pass = max(1, (self.chunk_size or m) // m)
        deltas, values = [], []
        for classes in torch.arange(k, device=x_pool.device).split(classes_per_pass):
            x_rep, d = x_pool[classes], delta[classes]
            for _ in range(self.steps - 1):
                d.requires_grad_(True)
                gain = _own_class_logits(model, x_rep + d, classes).sum()
                grad = torch.autograd.grad(gain, d)[0]
                d = self._step(d.detach().flatten(0, 1), grad.flatten(0, 1)).view_as(x_rep)
            with torch.no_grad():
                values.append(_own_class_logits(model, x_rep + d, classes))
            deltas.append(d)
        return torch.cat(deltas), torch.cat(values)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The largest increase of each class (k,), and its example and perturbation ((k, *shape) each)."""
        n = x.shape[0]
        clean, grads = class_input_gradients(model, x)  # (n, k), (n, k, *shape)
        clean, k = clean.detach(), clean.shape[1]
        classes = torch.arange(k, device=x.device)
        if self.candidates is not None and self.candidates < n:
            pool = grads.flatten(2).norm(dim=2).topk(self.candidates, dim=0).indices.T  # (k, m)
        else:
            pool = torch.arange(n, device=x.device).expand(k, n)
        first = grads.transpose(0, 1)[classes[:, None], pool]  # (k, m, *shape): grad f_j at pool[j]
        delta = self._step(torch.zeros_like(first).flatten(0, 1), first.flatten(0, 1)).view_as(first)
        deltas, perturbed = self._ascend(model, x[pool], delta)  # (k, m, *shape), (k, m)
        scores, best = (perturbed - clean.T.gather(1, pool)).max(1)  # (k,)
        return scores, (x[pool[classes, best]], deltas[classes, best].detach())

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(f_j(x_{i_j} + d_{i_j j}) - f_j(x_{i_j}))^2 for each class j (k,)."""
        x_sel, delta = winners
        k = x_sel.shape[0]
        logits = model(torch.cat([x_sel + delta, x_sel]))
        return (logits[:k].diagonal() - logits[k:].diagonal()).pow(2)


class LossGradientPenalty(Penalty):
    """grad-l2 / grad-l1: lmbda / n * sum_i ||grad_x l(f(x_i), y_i)||, the squared l2 norm or the l1 norm
    (``norm``), l the per-example cross-entropy. Needs the labels y."""

    def __init__(self, *, lmbda: float = 0.1, norm: str = "l2") -> None:
        super().__init__(lmbda=lmbda)
        self.norm = check_choice("norm", norm, ("l2", "l1"))
        self.name = f"loss-grad{norm}"

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if y is None or y.shape != x.shape[:1]:
            got = "none" if y is None else f"shape {tuple(y.shape)}"
            raise ValueError(f"{self.name} needs the labels y of shape ({x.shape[0]},), got {got}")

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        assert y is not None  # check_inputs
        x_in = x.requires_grad_(True)
        logits = check_logits(model(x_in), x.shape[0])
        loss = F.cross_entropy(logits, y, reduction="sum")
        grads = torch.autograd.grad(loss, x_in, create_graph=True)[0].flatten(1)
        per_example = grads.pow(2).sum(1) if self.norm == "l2" else grads.abs().sum(1)
        return per_example.mean()


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over examples of KL(p || q) for logits (n, k)."""
    return F.kl_div(F.log_softmax(q_logits, 1), F.log_softmax(p_logits, 1), log_target=True, reduction="batchmean")


class VATPenalty(Penalty):
    """Virtual adversarial training (Miyato et al., 2018).

        lmbda * mean_i KL(p(.|x_i) || p(.|x_i + r_i)),  r_i = eps * d_i / ||d_i||_2,

    d_i from ``steps`` power-iteration steps d <- grad_d KL(p(.|x) || p(.|x + xi d / ||d||)) from a
    Gaussian draw. As in VAT, p(.|x) is held constant (no gradient through the clean prediction).
    ``lmbda`` is the original's ``--vat_alpha``.
    """

    name = "vat"

    def __init__(
        self, *, lmbda: float = 1.0, eps: float = 1.0, xi: float = 1e-6, steps: int = 1, group: Group = SINGLE
    ) -> None:
        super().__init__(lmbda=lmbda)
        self.eps = check_positive("eps", eps)
        self.xi = check_positive("xi", xi)
        self.steps = check_int("steps", steps)
        self.group = group

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            clean = check_logits(model(x), x.shape[0])
        direction = self.group.draw(lambda count: randn((count, *x.shape[1:]), x), len(x))
        for _ in range(self.steps):
            probe = (self.xi * normalize_l2(direction)).requires_grad_(True)
            direction = torch.autograd.grad(_kl(clean, model(x + probe)), probe)[0]
        return _kl(clean, model(x + self.eps * normalize_l2(direction)))


class DeformationStabilityPenalty(SupremumPenalty):
    """||f||_tau^2, stability to deformations.

        lmbda * sum_j max_{i, r} (f_j(T_{v_ir} x_i) - f_j(x_i))^2

    over ``deformations`` random fields v_ir per example (drawn by ``sampler``, see
    ``deformations.RandomDeformation``), at most ``chunk_size`` deformed images per forward pass
    (default: the batch size). With ``candidates=m``, every example is first deformed by its first field
    only, and the other fields are tried on the m examples per class that this moved most: exact when
    m >= n. Shape: x (n, C, H, W), images.
    """

    name = "stability"

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
        _check_images(type(self).__name__, x)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The largest change of each class (k,), and its example and displacement field."""
        n, m = x.shape[0], self.deformations
        fields = _draw_fields(self.sampler, self.group, x, m)  # (n, m, H, W, 2): field r of example i
        with torch.no_grad():
            clean = check_logits(model(x), n)  # (n, k)
            k = clean.shape[1]
            changes = torch.full((n, m, k), -1.0, device=x.device, dtype=clean.dtype)  # -1: not tried
            changes[:, 0] = (model(deform(x, fields[:, 0])) - clean).pow(2)
            rows = torch.arange(n, device=x.device)
            if self.candidates is not None and self.candidates < n:
                rows = changes[:, 0].topk(self.candidates, dim=0).indices.flatten().unique()
            if m > 1:
                moved = deform(x[rows].repeat_interleave(m - 1, dim=0), fields[rows, 1:].flatten(0, 1))
                rest = torch.cat([model(chunk) for chunk in moved.split(self.chunk_size or n)])
                changes[rows, 1:] = (rest.view(len(rows), m - 1, k) - clean[rows, None]).pow(2)
        scores, winners = changes.flatten(0, 1).max(0)  # (k,), indices i * m + r
        examples, which = winners // m, winners % m
        return scores, (x[examples], fields[examples, which])

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(f_j(T_v x_{i_j}) - f_j(x_{i_j}))^2 for each class j (k,)."""
        x_sel, fields = winners
        k = x_sel.shape[0]
        logits = model(torch.cat([deform(x_sel, fields), x_sel]))
        return (logits[:k].diagonal() - logits[k:].diagonal()).pow(2)


class TangentGradientPenalty(SupremumPenalty):
    """||D_tau f||^2, gradients along deformation tangents.

        lmbda * sum_j max_i sum_m <grad_x f_j(x_i), t_im>^2,

    t_im the tangent vectors of ``deformations`` random fields per example (see ``deformations.tangent``).
    Shape: x (n, C, H, W), images.
    """

    name = "gradtangent"

    def __init__(
        self,
        *,
        lmbda: float = 0.1,
        deformations: int = 4,
        sampler: RandomDeformation | None = None,
        group: Group = SINGLE,
    ) -> None:
        super().__init__(lmbda=lmbda, group=group)
        self.deformations = check_int("deformations", deformations)
        self.sampler = sampler or RandomDeformation()

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        _check_images(type(self).__name__, x)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        tangents = tangent(x, _draw_fields(self.sampler, self.group, x, self.deformations)).flatten(2)  # (n, m, D)
        _, grads = class_input_gradients(model, x)  # (n, k, *shape)
        scores = torch.einsum("nkd,nmd->nkm", grads.flatten(2), tangents).pow(2).sum(2)  # (n, k)
        best, winners = scores.max(0)  # (k,)
        return best, (winners, tangents[winners])

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        examples, tangents = winners
        selected = _selected_class_gradients(model, x[examples]).flatten(1)  # (k, D)
        return torch.einsum("kd,kmd->km", selected, tangents).pow(2).sum(1)


class FirstExamples(Penalty):
    """A penalty applied to the first ``count`` examples of each batch only (for costly penalties, as the
    original's ``stability_ex_per_batch``): ``penalty(model, x[:count], y[:count])``, weighted by the
    penalty's own ``lmbda``."""

    def __init__(self, *, penalty: Penalty, count: int) -> None:
        self.penalty = penalty
        self.count = check_int("count", count)
        self.lmbda = penalty.lmbda
        self.name = penalty.name

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.penalty(model, x[: self.count], None if y is None else y[: self.count])
