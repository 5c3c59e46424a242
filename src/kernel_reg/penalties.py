"""Lower bounds of the RKHS norm of a classifier, used as penalties (Bietti, Mialon, Chen and Mairal, "A Kernel
Perspective for Regularizing Deep Neural Networks", ICML 2019), and the loss-gradient and VAT baselines.

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

    The model runs in the caller's train/eval mode; its flags, BatchNorm statistics and the caller's
    tensors are left as they were. ``name`` names the penalty; ``repr`` shows its hyperparameters.
    Subclasses implement ``unweighted`` (and ``check_inputs``).

    Args (keyword-only):
        lmbda: the weight, a finite number >= 0 (0 still computes the penalty, times 0); subclasses add
            their own hyperparameters.

    Shape:
        x: (n, *shape), the inputs; y: (n,) class indices, or None (only the penalties that need labels
        use them); model(x): logits (n, k).

    Returns:
        A scalar tensor, lmbda * value, in the model's dtype, with a graph to the model's parameters, also
        when called under ``torch.no_grad()``.

    Raises:
        ValueError: for inputs the penalty is not defined on (``check_inputs``), or a model that does not
            return logits (n, k).
    """

    name = "penalty"

    def __init__(self, *, lmbda: float) -> None:
        self.lmbda = check_nonnegative("lmbda", lmbda)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """lmbda * unweighted(model, x, y), after ``check_inputs``, with gradients enabled, model guarded."""
        self.check_inputs(x, y)
        with torch.enable_grad(), preserved_state(model):
            return self.lmbda * self.unweighted(model, x.detach(), None if y is None else y.detach())

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ValueError for inputs x (n, *shape) and labels y (n,) or None the penalty is not defined on
        (no-op here)."""

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The penalty without its weight, a scalar tensor (model and tensors already guarded, x detached)."""
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
    """lmbda * sum_j max_i s_j(x_i): a supremum over the batch for each class j = 1..k.

    Two passes: ``search`` finds, without a parameter graph, each class's maximiser and its score
    (k,); ``terms`` recomputes the k winning terms with their graph. The argmax is a constant, so this is
    the exact gradient of the definition at a fraction of the cost of a graph through the whole search.
    On several processes (``group``, see ``distributed.Group``) the maximiser is sought over the global
    batch. Labels are not used.

    Args (keyword-only):
        lmbda: the weight, >= 0.
        group: the process group (default ``SINGLE``: one process); with several, the rank whose example
            wins a class keeps its term (``distributed.Group.supremum_sum``).

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        A scalar tensor, lmbda * sum_j s_j(x_{i_j}), with a graph to the model's parameters.
    """

    def __init__(self, *, lmbda: float, group: Group = SINGLE) -> None:
        super().__init__(lmbda=lmbda)
        self.group = group

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(scores, winners): per class, the largest score s_j(x_{i_j}) (k,), and what ``terms`` needs to
        recompute the winners."""
        raise NotImplementedError

    def terms(self, model: nn.Module, x: torch.Tensor, winners: Any) -> torch.Tensor:
        """The winning term of each class (k,), with its graph."""
        raise NotImplementedError

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """sum_j of the winning terms, over the global batch on several processes."""
        scores, winners = self.search(model, x)
        return self.group.supremum_sum(self.terms(model, x, winners), scores.detach())

    def class_terms(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The unweighted winning term s_j(x_{i_j}) of each class on this batch, on this process alone.

        Shape:
            x: (n, *shape); output: (k,), with a graph to the model's parameters.
        """
        self.check_inputs(x, None)
        with torch.enable_grad(), preserved_state(model):
            x = x.detach()
            return self.terms(model, x, self.search(model, x)[1])


def class_input_gradients(
    model: nn.Module, x: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-class input gradients grads[i, j] = grad_x f_j(x_i).

    One forward pass, then k input-only backward passes on the retained graph (no parameter
    gradients are formed unless ``create_graph``). Exact per example when the examples do not interact
    (no BatchNorm in train mode): each is the gradient of sum_i f_j(x_i).

    Args:
        model: maps x to logits (n, k).
        x: the inputs, (n, *shape).
        create_graph: keep a graph through the gradients (for double backpropagation); default False.

    Shape:
        x: (n, *shape); logits: (n, k); grads: (n, k, *shape).

    Returns:
        (logits, grads).
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
    """||grad f||^2, the supremum gradient penalty (Bietti, Mialon, Chen and Mairal, ICML 2019):

        lmbda * sum_j max_i ||grad_x f_j(x_i)||_2^2 = lmbda * sum_j ||grad_x f_j(x_{i_j})||_2^2,
        i_j = argmax_i ||grad_x f_j(x_i)||_2^2.

    The search takes the per-class input gradients of the batch (one forward, k input-only backward
    passes); the k winners are recomputed with a graph for double backpropagation.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
        group: the process group (default: one process; see ``SupremumPenalty``).

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Example:
        >>> penalty = GradientPenalty(lmbda=0.1)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
        >>> loss.backward()
    """

    name = "gradient-penalty"

    def __init__(self, *, lmbda: float = 0.1, group: Group = SINGLE) -> None:
        super().__init__(lmbda=lmbda, group=group)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """max_i ||grad_x f_j(x_i)||_2^2 per class (k,), and the maximising example indices i_j (k,)."""
        _, grads = class_input_gradients(model, x)  # (n, k, *shape)
        scores, winners = grads.flatten(2).pow(2).sum(2).max(0)  # (k,) each
        return scores, winners

    def terms(self, model: nn.Module, x: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
        """||grad_x f_j(x_{i_j})||_2^2 for each class j (k,), with a graph for double backpropagation."""
        return _selected_class_gradients(model, x[winners]).flatten(1).pow(2).sum(1)


class AdversarialPerturbationPenalty(SupremumPenalty):
    """||f||_delta^2, the adversarial perturbation penalty (Bietti, Mialon, Chen and Mairal, ICML 2019).

    For each class j and example i, d_ij approximately maximises f_j(x_i + d) - f_j(x_i) over
    ||d||_2 <= eps by ``steps`` normalised gradient steps d <- Proj_eps(d + step_size * g / ||g||_2),
    g = grad_d f_j(x_i + d), from d = 0 (no clip box: the inputs may leave their range). With i_j the
    example of largest increase f_j(x_i + d_ij) - f_j(x_i),

        lmbda * sum_j (f_j(x_{i_j} + d_{i_j j}) - f_j(x_{i_j}))^2,

    gradients flowing through both terms (d_{i_j j} held constant).

    The first step, from d = 0, needs only the per-class input gradients of the clean batch (one forward,
    k input-only backward passes); the remaining steps - 1 forward k copies of the batch, in passes of
    whole classes of m examples (m = n, or ``candidates``). With ``candidates=m``, only the m examples of
    steepest ascent per class (largest ||grad_x f_j(x_i)||_2) continue after the first step: the search
    then costs about m / n of the exact one, and is exact when m >= n.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 1.0).
        eps: the radius of the l2 ball, > 0 (default 1.0).
        steps: the number of ascent steps, >= 1 (default 5).
        step_size: the step length, > 0; None (default): 1.5 eps / steps.
        chunk_size: the largest number of examples per forward pass of the search, >= 1, rounded down to
            whole classes of m examples but at least one class per pass; None (default): one class per
            pass.
        candidates: m, the examples per class kept after the first step, >= 1; None (default): all n.
        group: the process group (default: one process; see ``SupremumPenalty``).

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Example:
        >>> penalty = AdversarialPerturbationPenalty(lmbda=1.0, eps=1.0, steps=5, candidates=8)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
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
        """The largest increase max_i f_j(x_i + d_ij) - f_j(x_i) of each class (k,), and its example and
        perturbation ((k, *shape) each)."""
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
    """grad-l2 / grad-l1, the loss-gradient penalties compared in Bietti, Mialon, Chen and Mairal (ICML 2019)
    (double backpropagation, Drucker and LeCun, 1992):

        lmbda / n * sum_i ||grad_x l(f(x_i), y_i)||_2^2   (norm "l2")   or
        lmbda / n * sum_i ||grad_x l(f(x_i), y_i)||_1     (norm "l1"),

    l the per-example cross-entropy. Needs the labels y. One forward and one backward pass with a graph
    for double backpropagation. Named "loss-gradl2" or "loss-gradl1".

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.1).
        norm: "l2" (default: the squared l2 norm) or "l1".

    Shape:
        x: (n, *shape); y: (n,) class indices, required; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Raises:
        ValueError: when y is None or not of shape (n,).

    Example:
        >>> penalty = LossGradientPenalty(lmbda=0.1, norm="l2")
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
    """

    def __init__(self, *, lmbda: float = 0.1, norm: str = "l2") -> None:
        super().__init__(lmbda=lmbda)
        self.norm = check_choice("norm", norm, ("l2", "l1"))
        self.name = f"loss-grad{norm}"

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ValueError unless y has the shape (n,)."""
        if y is None or y.shape != x.shape[:1]:
            got = "none" if y is None else f"shape {tuple(y.shape)}"
            raise ValueError(f"{self.name} needs the labels y of shape ({x.shape[0]},), got {got}")

    def unweighted(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """mean_i ||grad_x l(f(x_i), y_i)||_2^2 (or ||.||_1)."""
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
    """Virtual adversarial training (Miyato, Maeda, Koyama and Ishii, TPAMI 2018):

        lmbda * mean_i KL(p(.|x_i) || p(.|x_i + r_i)),  r_i = eps * d_i / ||d_i||_2,

    p(.|x) = softmax(f(x)), d_i from ``steps`` power-iteration steps
    d <- grad_r KL(p(.|x) || p(.|x + r)) at r = xi d / ||d||_2, from a Gaussian draw (the global RNG).
    As in VAT, p(.|x) is held constant (no gradient through the clean prediction) and r_i too. Labels are
    not used. ``lmbda`` is the original's ``--vat_alpha``.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 1.0).
        eps: the norm of the adversarial direction r_i, > 0 (default 1.0).
        xi: the finite-difference radius of the power iteration, > 0 (default 1e-6).
        steps: power-iteration steps, >= 1 (default 1).
        group: the process group; on several, the Gaussian draws are made for the global batch.

    Shape:
        x: (n, *shape); y: (n,) or None, not used; model(x): logits (n, k).

    Returns:
        The penalty above, a scalar tensor with a graph to the model's parameters.

    Example:
        >>> penalty = VATPenalty(lmbda=1.0, eps=1.0)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x)
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
        """mean_i KL(p(.|x_i) || p(.|x_i + r_i)), the power iteration included."""
        with torch.no_grad():
            clean = check_logits(model(x), x.shape[0])
        direction = self.group.draw(lambda count: randn((count, *x.shape[1:]), x), len(x))
        for _ in range(self.steps):
            probe = (self.xi * normalize_l2(direction)).requires_grad_(True)
            direction = torch.autograd.grad(_kl(clean, model(x + probe)), probe)[0]
        return _kl(clean, model(x + self.eps * normalize_l2(direction)))


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
        """Raise ValueError unless x is a batch of images (n, C, H, W)."""
        _check_images(type(self).__name__, x)

    def search(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """max_i sum_m <grad_x f_j(x_i), t_im>^2 per class (k,), and the maximising examples (k,) with their
        flattened tangents (k, m, C * H * W)."""
        tangents = tangent(x, _draw_fields(self.sampler, self.group, x, self.deformations)).flatten(2)  # (n, m, D)
        _, grads = class_input_gradients(model, x)  # (n, k, *shape)
        scores = torch.einsum("nkd,nmd->nkm", grads.flatten(2), tangents).pow(2).sum(2)  # (n, k)
        best, winners = scores.max(0)  # (k,)
        return best, (winners, tangents[winners])

    def terms(self, model: nn.Module, x: torch.Tensor, winners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """sum_m <grad_x f_j(x_{i_j}), t_{i_j m}>^2 for each class j (k,), with its graph."""
        examples, tangents = winners
        selected = _selected_class_gradients(model, x[examples]).flatten(1)  # (k, D)
        return torch.einsum("kd,kmd->km", selected, tangents).pow(2).sum(1)


class FirstExamples(Penalty):
    """A penalty applied to the first ``count`` examples of each batch only (for costly penalties, as the
    original's ``stability_ex_per_batch``): ``penalty(model, x[:count], y[:count])``, weighted by the
    penalty's own ``lmbda`` (``lmbda`` and ``name`` are the wrapped penalty's).

    Args (keyword-only):
        penalty: the penalty to apply.
        count: the number of leading examples it sees, >= 1 (all of a smaller batch).

    Shape:
        x: (n, *shape); y: (n,) or None; the wrapped penalty gets x[:count], y[:count].

    Returns:
        The wrapped penalty's scalar on those examples.

    Example:
        >>> penalty = FirstExamples(penalty=DeformationStabilityPenalty(lmbda=0.1), count=32)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model, x, y)
    """

    def __init__(self, *, penalty: Penalty, count: int) -> None:
        self.penalty = penalty
        self.count = check_int("count", count)
        self.lmbda = penalty.lmbda
        self.name = penalty.name

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``penalty(model, x[:count], y[:count])``."""
        return self.penalty(model, x[: self.count], None if y is None else y[: self.count])
