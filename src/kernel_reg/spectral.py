"""The upper bound of the RKHS norm: spectral norms of the layers (Bietti, Mialon, Chen and Mairal, ICML 2019).

W_mat denotes a Conv/Linear weight reshaped to (out, -1); BatchNorm weights and biases are never
touched. Contents:

- ``project_``: clip the singular values of every W_mat at tau (constraint), with ``tau_schedule`` and
  ``Projection`` (the constraint as training applies it);
- ``SpectralNormPenalty``: lmbda * sum_layers sigma_max(W_mat)^2, by power iteration or exactly.

The norms of layers as operators on their inputs, guaranteed Lipschitz bounds and certificates are in
``lipschitz``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import lipschitz
from .arguments import check_choice, check_int, check_nonnegative, check_positive, describe
from .deprecation import moved_names, old_arguments
from .orthogonal import CayleyConv2d
from .penalties import Penalty

# moved to kernel_reg.lipschitz in 0.2 (importable from here, with a DeprecationWarning, until 0.3)
__getattr__ = moved_names(
    __name__,
    dict.fromkeys(
        ("LipschitzBounded", "certified_accuracy", "certified_radius", "conv_operator_norm_upper_bound",
         "gram_iteration_bound", "lipschitz_upper_bound", "operator_norm"),
        "kernel_reg.lipschitz",
    ),
)  # fmt: skip

# the layers whose W_mat the spectral constraint and penalty act on
SPECTRAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def spectral_layers(model: nn.Module) -> list[tuple[str, Layer]]:
    """The (name, module) pairs whose weights the spectral constraint and penalty act on.

    Args:
        model: any module.

    Returns:
        Its Linear and Conv1d/2d/3d submodules with their names, in ``named_modules`` order (the model
        itself included when it is such a layer).
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SPECTRAL_LAYERS)]


def weight_matrix(layer: Layer) -> torch.Tensor:
    """W_mat: the weight reshaped to (out, -1), a view with its graph.

    sigma_max(W_mat) is the quantity the constraint and penalty control; for a convolution it is not the
    layer's operator norm (see ``operator_norm`` and ``conv_operator_norm_upper_bound``).

    Shape:
        Output: (out, in) for Linear, (out, in / groups * prod(kernel_size)) for a convolution.
    """
    return layer.weight.reshape(layer.weight.shape[0], -1)


def _gram(mat: torch.Tensor) -> torch.Tensor:
    """W W^T or W^T W, whichever is smaller: its eigenvalues are the squared singular values of W."""
    return mat @ mat.T if mat.shape[0] <= mat.shape[1] else mat.T @ mat


def clip_singular_values(mat: torch.Tensor, tau: float) -> torch.Tensor:
    """The Frobenius-nearest matrix to ``mat`` with all singular values <= tau: U min(S, tau) V^T.

    Computed from the eigendecomposition of the smaller Gram matrix, as the correction
    W - sum_{s_i > tau} (1 - tau / s_i) u_i u_i^T W (or its transpose), so that only the clipped
    directions are touched and smaller singular values stay exactly as they were. Works in float32 for
    lower-precision inputs.

    Args:
        mat: the matrix W, (p, q).
        tau: the largest singular value allowed (not checked here; ``project_`` checks tau > 0).

    Returns:
        ``mat`` itself (the same object) when no singular value exceeds tau, else a new (p, q) matrix in
        ``mat``'s dtype.
    """
    work = mat if mat.dtype in (torch.float32, torch.float64) else mat.float()
    eigvals, eigvecs = torch.linalg.eigh(_gram(work))
    sigma = eigvals.clamp_min(0).sqrt()
    over = sigma > tau
    if not bool(over.any()):
        return mat
    basis = eigvecs[:, over]  # (min(out, in), r)
    shrink = 1.0 - tau / sigma[over]  # (r,)
    if work.shape[0] <= work.shape[1]:
        clipped = work - basis @ (shrink[:, None] * (basis.T @ work))
    else:
        clipped = work - ((work @ basis) * shrink) @ basis.T
    return clipped.to(mat.dtype)


NORMS = ("reshaped", "operator")


@torch.no_grad()
def project_(
    model: nn.Module, tau: float, norm: str = "reshaped", input_shape: Sequence[int] | None = None, iters: int = 12
) -> None:
    """Project every Conv/Linear weight in place onto a set of bounded norm (call after ``optimizer.step()``).

    norm="reshaped" (the original's constraint; Bietti, Mialon, Chen and Mairal, ICML 2019): onto
    {sigma_max(W_mat) <= tau}, W_mat <- U min(S, tau) V^T (``clip_singular_values``). This bounds the
    reshaped kernel, not the convolution as an operator on images.

    norm="operator": every layer's operator norm on inputs of ``input_shape`` (stride, padding, dilation and
    groups as the layer has them) becomes guaranteed <= tau: W <- W tau / B when B > tau, B the layer's
    Gram-iteration upper bound (``lipschitz.conv_operator_norm_upper_bound``, ``iters`` steps; a Linear
    layer's is its sigma_max). Then a network of such layers and 1-Lipschitz activations is tau^depth times
    its fixed layers' constants Lipschitz.

    Runs without a graph; layers already inside the set are not written.

    Args:
        model: the model whose ``spectral_layers`` are projected.
        tau: the radius, a finite number > 0.
        norm: "reshaped" (default) or "operator".
        input_shape: norm="operator": the shape of one input of the model, e.g. (1, 28, 28).
        iters: norm="operator": Gram-iteration steps per layer (more: a tighter bound).

    Example:
        >>> optimizer.step()
        >>> project_(model, tau_schedule(tau=1.5, kappa=2.0, epoch=epoch))
        >>> project_(model, 1.0, norm="operator", input_shape=(1, 28, 28))  # guaranteed 1-Lipschitz layers
    """
    tau = check_positive("tau", tau)
    check_choice("norm", norm, NORMS)
    if norm == "operator":
        shapes = _shapes_for(model, input_shape)
        for _, layer in spectral_layers(model):
            bound = lipschitz.layer_upper_bound(layer, shapes.get(layer, ()), iters)
            if bound > tau:
                layer.weight.mul_(tau / bound)
        return
    for _, layer in spectral_layers(model):
        mat = weight_matrix(layer)
        clipped = clip_singular_values(mat, tau)
        if clipped is not mat:
            layer.weight.copy_(clipped.view_as(layer.weight))


def _shapes_for(model: nn.Module, input_shape: Sequence[int] | None) -> dict[nn.Module, tuple[int, ...]]:
    if input_shape is None:
        raise ValueError("norm='operator' needs input_shape, the shape of one model input, e.g. (1, 28, 28)")
    return lipschitz.input_shapes(model, input_shape)


def tau_schedule(tau: float, kappa: float, epoch: float) -> float:
    """The decaying constraint radius of the original: tau * (1 + 4 exp(-epoch / kappa)).

    5 tau at epoch 0, decreasing to tau; kappa = 0: tau from the start (certified training, where a margin
    is kept for the final radius from the first step).

    Args:
        tau: the final radius, > 0.
        kappa: the decay time in epochs, >= 0.
        epoch: the (possibly fractional) epoch.

    Returns:
        The radius, a float.
    """
    check_positive("tau", tau)
    if check_nonnegative("kappa", kappa) == 0:
        return tau
    return tau * (1.0 + 4.0 * math.exp(-epoch / kappa))


def operator_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of ``model``'s layers in ``lipschitz.LINEAR_LAYERS`` (Linear, Conv2d,
    CayleyConv2d), whose operator norms compose the Lipschitz bound, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, lipschitz.LINEAR_LAYERS)]


class OperatorNorms(nn.Module):
    """Persistent power iteration on the operator of every layer of ``operator_layers`` (its linear part on
    inputs of the layer's input shape), one unit vector per layer kept between calls as a buffer, so that one or
    two steps per training step track the top singular value as the weights move.

    ``estimates(model, shapes, steps)`` returns sigma_l = ||A_l v_l||_2 per layer, v_l the unit vector after
    ``steps`` steps: a lower bound on the operator norm that converges to it, differentiable with respect to
    the weights (v_l held constant); 1 for an orthogonal ``CayleyConv2d``. The vectors are buffers
    (``state_dict`` carries them).
    """

    def estimates(
        self, model: nn.Module, shapes: dict[nn.Module, tuple[int, ...]], steps: int
    ) -> dict[str, torch.Tensor]:
        sigmas = {}
        for name, layer in operator_layers(model):
            if isinstance(layer, CayleyConv2d):  # orthogonal by construction: nothing to estimate
                sigmas[name] = torch.ones((), device=layer.weight.device, dtype=layer.weight.dtype)
                continue
            shape = shapes.get(layer, ())
            apply = _linear_map(layer)
            key = "v:" + name.replace(".", "/")
            v = self._buffers.get(key)
            weight = cast(torch.Tensor, layer.weight)
            if v is None or tuple(v.shape) != (1, *shape) or v.device != weight.device or v.dtype != weight.dtype:
                v = _unit(torch.randn(1, *shape, device=weight.device, dtype=weight.dtype))
            v = _power_steps(apply, v, steps)
            self.register_buffer(key, v)
            sigmas[name] = apply(v).flatten().norm()
        return sigmas

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for key, value in state_dict.items():  # the vectors are made on first use: make them for loading too
            if key.startswith(prefix) and key[len(prefix) :] not in self._buffers:
                self.register_buffer(key[len(prefix) :], torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten().norm().clamp_min(torch.finfo(v.dtype).tiny)


@torch.no_grad()
def _power_steps(apply: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` steps of power iteration on A^T A from v, A = ``apply`` (linear): v <- A^T A v / ||A^T A v||."""
    for _ in range(steps):
        v = _unit(torch.func.vjp(apply, v)[1](apply(v))[0])
    return v


@dataclass(frozen=True)
class _Operator:
    """How a Linear or Conv2d layer applies a weight (without its bias): (W, v) -> A_W v, with the layer's
    stride, padding (its mode too: circular, reflect, ...), dilation and groups."""

    conv: bool
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    mode_padding: tuple[int, ...] | None = None  # F.pad's amounts when padding_mode is not "zeros"
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, layer: nn.Module) -> _Operator:
        if isinstance(layer, nn.Linear):
            return cls(conv=False)
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"operator norms are defined for Linear and Conv2d layers, got {type(layer).__name__}")
        padded = layer.padding_mode != "zeros"
        return cls(
            conv=True, stride=layer.stride, padding=0 if padded else layer.padding, dilation=layer.dilation,
            groups=layer.groups, padding_mode=layer.padding_mode,
            mode_padding=tuple(layer._reversed_padding_repeated_twice) if padded else None,
        )  # fmt: skip

    def __call__(self, weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            return F.linear(v, weight)
        if self.mode_padding is not None:
            v = F.pad(v, self.mode_padding, mode=self.padding_mode)
        return F.conv2d(v, weight, None, self.stride, self.padding, self.dilation, self.groups)


def _linear_map(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> the layer's linear part applied to v (no bias)."""
    operator = _Operator.of(layer)
    return lambda v: operator(cast(torch.Tensor, layer.weight), v)


class OperatorNormalization(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``) of a Linear / Conv2d weight by its operator norm on
    inputs of one shape, spectral normalization (Miyato, Kataoka, Koyama and Yoshida, ICLR 2018) of the
    operator rather than of the reshaped kernel:

        W_eff = W / ||A_W v||_2,

    A_W the layer's linear map on its inputs and v a unit vector (buffer) that persistent power iteration
    on A_W^T A_W keeps near the top right singular vector, so sigma_max(A_{W_eff}) = sigma_max(A_W) / ||A_W v||
    >= 1, within the power iteration's lag of 1. The forward pass only reads v: every read of the weight
    within a training step sees the same W_eff, and ``power_step_`` (``renormalize_``, after each optimizer
    step) moves v. Guarantees come from bounding W_eff itself (``lipschitz.lipschitz_upper_bound``).

    Args:
        layer: the Linear or Conv2d layer whose weight it parametrizes.
        input_shape: the shape of one input of that layer, e.g. (32, 28, 28).
        steps: power-iteration steps per ``power_step_`` (>= 1).
    """

    v: torch.Tensor

    def __init__(self, layer: nn.Module, input_shape: Sequence[int], steps: int = 1) -> None:
        super().__init__()
        self.operator = _Operator.of(layer)
        self.steps = check_int("steps", steps)
        weight = cast(torch.Tensor, layer.weight)
        self.register_buffer("v", _unit(torch.randn(1, *input_shape, device=weight.device, dtype=weight.dtype)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.operator(weight, self.v).flatten().norm()

    def power_step_(self, weight: torch.Tensor, steps: int | None = None) -> None:
        """v <- A^T A v / ||A^T A v|| (``steps`` times, default the parametrization's), A = A_weight."""
        count = self.steps if steps is None else check_int("steps", steps)
        self.v.copy_(_power_steps(lambda u: self.operator(weight, u), self.v, count))


def _normalizations(model: nn.Module) -> list[tuple[OperatorNormalization, torch.Tensor]]:
    """(parametrization, raw weight) of every weight of ``model`` that ``normalize_`` parametrized."""
    found = []
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            chain = cast(parametrize.ParametrizationList, module.parametrizations["weight"])  # type: ignore[index]
            found += [(p, chain.original) for p in chain if isinstance(p, OperatorNormalization)]
    return found


def _check_fresh(model: nn.Module, caller: str) -> None:
    """ValueError, in one line, when ``orthogonalize_`` or ``normalize_`` has already been applied to ``model``."""
    if any(isinstance(m, CayleyConv2d) for m in model.modules()):
        raise ValueError(f"{caller}: the model is already orthogonalized by orthogonalize_ (its convolutions are "
                         "CayleyConv2d); apply orthogonalize_ once, to a fresh model")  # fmt: skip
    if _normalizations(model):
        raise ValueError(f"{caller}: the model is already normalized by normalize_ (its weights are already "
                         "parametrized); apply one of them once, to a fresh model")  # fmt: skip


def normalize_(model: nn.Module, input_shape: Sequence[int], steps: int = 1, warmup: int = 100) -> nn.Module:
    """Parametrize every Linear / Conv2d weight of ``model`` in place by ``OperatorNormalization``, so that
    each layer's operator norm on its inputs (those of a model input of ``input_shape``) is held near 1 for
    the whole of training; the power iteration starts with ``warmup`` steps. Returns the model.

    Call ``renormalize_(model)`` after each optimizer step (``training.step`` does). The state dict holds
    each raw weight as ``<layer>.parametrizations.weight.original`` beside its vector ``...weight.0.v``.

    Example:
        >>> model = normalize_(models.lipnet(), (1, 28, 28))
        >>> lipschitz.lipschitz_upper_bound(model, (1, 28, 28))  # about 1 with MaxMin activations
    """
    _check_fresh(model, "normalize_")
    return _normalize(model, input_shape, steps, warmup)


def _normalize(model: nn.Module, input_shape: Sequence[int], steps: int, warmup: int) -> nn.Module:
    """``normalize_`` without its check that the model is fresh (``orthogonalize_`` normalizes what it leaves)."""
    check_int("warmup", warmup, minimum=0)
    shapes = lipschitz.input_shapes(model, input_shape)
    for name, layer in spectral_layers(model):
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"normalize_: layer {name!r} ({type(layer).__name__}) is already parametrized; "
                             "normalize_ a model once")  # fmt: skip
        normalization = OperatorNormalization(layer, shapes[layer], steps)
        if warmup:
            normalization.power_step_(layer.weight.detach(), warmup)
        parametrize.register_parametrization(layer, "weight", normalization)
    return model


def renormalize_(model: nn.Module, steps: int | None = None) -> None:
    """Power iteration for every ``OperatorNormalization`` of ``model`` (nothing without any), each its own
    number of steps or ``steps``: v follows the weights after an optimizer step."""
    for normalization, weight in _normalizations(model):
        normalization.power_step_(weight.detach(), steps)


class Projection(nn.Module):
    """The spectral constraint as training uses it: after each step at ``epoch``, every layer is brought
    into the set of radius tau_schedule(tau, kappa, epoch).

    norm="reshaped": ``project_`` on the reshaped kernels, exactly, at every step. norm="operator": at every
    step each layer is divided by its power-iteration estimate of its operator norm when that exceeds the
    radius (``OperatorNorms``, ``steps`` steps: as cheap as the reshaped projection), and at the end of each
    epoch (``finish_epoch``) ``project_(norm="operator")`` makes every norm guaranteed <= the radius, so that
    the weights saved and evaluated are.

    Args (keyword-only):
        tau: the final radius, > 0 (default 0.5).
        kappa: the decay time of the radius in epochs, >= 0 (default 2.0; 0: the radius is tau throughout).
        norm: "reshaped" (default) or "operator".
        input_shape: norm="operator": the shape of one input of the model.
        steps: norm="operator": power-iteration steps per training step (default 1).
    """

    def __init__(
        self,
        *,
        tau: float = 0.5,
        kappa: float = 2.0,
        norm: str = "reshaped",
        input_shape: Sequence[int] | None = None,
        steps: int = 1,
    ) -> None:
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.kappa = check_nonnegative("kappa", kappa)
        self.norm = check_choice("norm", norm, NORMS)
        if norm == "operator" and input_shape is None:
            raise ValueError("norm='operator' needs input_shape, the shape of one input of the model")
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.steps = check_int("steps", steps)
        self.operators = OperatorNorms()

    def radius(self, epoch: float) -> float:
        """tau * (1 + 4 exp(-epoch / kappa)), the radius at ``epoch``."""
        return tau_schedule(self.tau, self.kappa, epoch)

    def __repr__(self) -> str:
        return describe(self)

    @torch.no_grad()
    def __call__(self, model: nn.Module, epoch: float) -> float:
        """Bring ``model`` into the set in place; returns the radius used."""
        radius = self.radius(epoch)
        if self.norm == "reshaped":
            project_(model, radius)
            return radius
        shapes = _shapes_for(model, self.input_shape)
        layers = dict(spectral_layers(model))
        for name, sigma in self.operators.estimates(model, shapes, self.steps).items():
            if name in layers and sigma > radius:  # an orthogonal layer has no scale to project
                layers[name].weight.mul_(radius / sigma)
        return radius

    @torch.no_grad()
    def finish_epoch(self, model: nn.Module, epoch: float) -> None:
        """norm="operator": make every layer's norm guaranteed <= the radius (nothing for "reshaped", whose
        every step is exact)."""
        if self.norm == "operator":
            project_(model, self.radius(epoch), norm="operator", input_shape=self.input_shape)


class SpectralNormPenalty(Penalty, nn.Module):
    """The spectral-norm penalty (Bietti, Mialon, Chen and Mairal, ICML 2019), an upper-bound regularizer:

        lmbda * sum_layers sigma_max(W_mat)^2

    over the model's Conv/Linear layers (``spectral_layers``).

    The power-iteration vectors are buffers of this module (as in spectral normalization, Miyato, Kataoka,
    Koyama and Yoshida, ICLR 2018), so ``state_dict()`` carries them into a checkpoint like any other
    state; a vector whose shape, device or dtype no longer matches its layer is drawn again (global RNG).
    The model is not run: x and y are not used, and the call needs no ``preserved_state``.

    Args (keyword-only):
        lmbda: the weight, >= 0 (default 0.01).
        method: "power" (default): ``steps`` power-iteration steps per call from vectors kept between calls
            (one per layer, so the estimate sharpens as training goes), sigma = u^T W_mat v with u, v held
            constant (an estimate from below); "svd": the exact largest eigenvalue of the smaller Gram
            matrix, sigma^2.
        steps: power-iteration steps per call, >= 1 (default 2; "power" only).
        norm: "reshaped" (default): sigma_max of W_mat; "operator" ("power" only): the norm of the layer as
            an operator on its inputs, by persistent power iteration on the operator (``OperatorNorms``),
            which needs x to know the input shape.

    Shape:
        x, y: not used (may be omitted).

    Returns:
        A scalar tensor, the penalty above, with a graph to the layers' weights.

    Raises:
        ValueError: for a model without Linear or Conv1d/2d/3d layers.

    Example:
        >>> penalty = SpectralNormPenalty(lmbda=0.01, method="power", steps=2)
        >>> loss = F.cross_entropy(model(x), y) + penalty(model)
        >>> sigmas = penalty.sigmas(model)  # sigma_max(W_mat) per layer
    """

    name = "spectral-norm"

    @old_arguments(("lmbda", "method", "iters"), renamed={"iters": "steps"})
    def __init__(self, *, lmbda: float = 0.01, method: str = "power", steps: int = 2, norm: str = "reshaped") -> None:
        nn.Module.__init__(self)
        Penalty.__init__(self, lmbda=lmbda)
        self.method = check_choice("method", method, ("power", "svd"))
        self.steps = check_int("steps", steps)
        self.norm = check_choice("norm", norm, NORMS)
        if norm == "operator" and method != "power":
            raise ValueError("norm='operator' is estimated by power iteration: use method='power'")
        self.operators = OperatorNorms()

    @staticmethod
    def _key(layer_name: str) -> str:
        return "u:" + layer_name.replace(".", "/")  # buffer names cannot hold dots

    def _power_sigma(self, name: str, mat: torch.Tensor) -> torch.Tensor:
        key = self._key(name)
        u = self._buffers.get(key)
        if u is None or u.shape[0] != mat.shape[0] or u.device != mat.device or u.dtype != mat.dtype:
            u = F.normalize(torch.randn(mat.shape[0], device=mat.device, dtype=mat.dtype), dim=0)
        with torch.no_grad():
            for _ in range(self.steps):
                v = F.normalize(mat.T @ u, dim=0)
                u = F.normalize(mat @ v, dim=0)
        self.register_buffer(key, u)
        return u @ mat @ v

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for key, value in state_dict.items():  # the vectors are made on first use: make them for loading too
            if key.startswith(prefix) and key[len(prefix) :] not in self._buffers:
                self.register_buffer(key[len(prefix) :], torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def squared_sigmas(self, model: nn.Module, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """sigma_max(W_mat)^2 of each layer, differentiable with respect to the weights (no square root,
        so zero weights have a finite gradient).

        Returns:
            One 0-dim tensor per layer of ``spectral_layers(model)``, in that order; with "power", each
            call advances the power iteration.

        Raises:
            ValueError: for a model without Linear or Conv1d/2d/3d layers.
        """
        layers = spectral_layers(model)
        if not layers:
            raise ValueError(
                f"{type(model).__name__} has no layer the spectral-norm penalty acts on (Linear, Conv1d/2d/3d)"
            )
        if self.norm == "operator":
            if x is None:
                raise ValueError("the operator-norm penalty needs the inputs x (their shape): penalty(model, x)")
            shapes = lipschitz.input_shapes(model, x.shape[1:])
            return [s.pow(2) for s in self.operators.estimates(model, shapes, self.steps).values()]
        if self.method == "svd":
            return [torch.linalg.eigvalsh(_gram(weight_matrix(m)))[-1].clamp_min(0) for _, m in layers]
        return [self._power_sigma(name, weight_matrix(m)).pow(2) for name, m in layers]

    def sigmas(self, model: nn.Module, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """sigma_max of each layer, 0-dim tensors (for reading; the penalty uses ``squared_sigmas``)."""
        return [s.sqrt() for s in self.squared_sigmas(model, x)]

    def unweighted(self, model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """sum_layers sigma_max(W_mat)^2."""
        return torch.stack(self.squared_sigmas(model, x)).sum()

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """lmbda * sum_layers sigma_max(W_mat)^2, with its graph also under ``torch.no_grad()`` (``logits``
        ignored)."""
        with torch.enable_grad():
            return self.lmbda * self.unweighted(model, x, y)

    def __repr__(self) -> str:
        return describe(self)


def orthogonalize_(model: nn.Module, input_shape: Sequence[int], warmup: int = 100) -> nn.Module:
    """Make every layer of ``model`` orthogonal or normalized, in place, for inputs of ``input_shape``:
    each Conv2d becomes an ``orthogonal.CayleyConv2d`` (Trockman and Kolter, ICLR 2021) with the same
    channels, kernel size and bias on the spatial size it receives (a freshly drawn kernel: call before
    training), and the remaining Linear layers are held at operator norm 1 by ``normalize_`` (``warmup``
    power-iteration steps). Returns the model.

    Every singular value of an orthogonal convolution is 1, where ``normalize_`` holds only the largest at 1:
    with MaxMin activations the convolutions keep the norm of every input and every gradient.

    Raises:
        ValueError: for a Conv2d that is not a circular convolution (stride 1, dilation 1, groups 1, an odd
            square kernel k, padding k // 2 with ``padding_mode="circular"``), as ``models.lipnet``'s are.
    """
    if isinstance(model, nn.Conv2d):
        raise ValueError("orthogonalize_ replaces layers inside a model: wrap the Conv2d in nn.Sequential")
    _check_fresh(model, "orthogonalize_")
    shapes = lipschitz.input_shapes(model, input_shape)
    convolutions = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, conv in convolutions:
        k = conv.kernel_size[0]
        circular = (
            conv.padding_mode == "circular" and conv.kernel_size == (k, k) and k % 2 == 1
            and conv.padding == (k // 2, k // 2) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1
        )  # fmt: skip
        if not circular:
            raise ValueError(
                f"orthogonalize_ replaces circular convolutions only (stride 1, dilation 1, groups 1, odd square "
                f"kernel k, padding k // 2, padding_mode 'circular'); layer {name!r} is {conv}"
            )
        cayley = CayleyConv2d(conv.in_channels, conv.out_channels, k, shapes[conv][-2:], bias=conv.bias is not None)
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, cayley.to(conv.weight.device, conv.weight.dtype))
    return _normalize(model, input_shape, 1, warmup)
