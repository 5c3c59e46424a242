"""Shared helpers: the model-state guard, argument checks and small tensor utilities."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


@contextlib.contextmanager
def preserved_state(model: nn.Module, mode: bool | None = None) -> Iterator[None]:
    """Run a block on ``model`` and leave it exactly as it was found.

    Saves the train/eval flag of every submodule, optionally switches the whole model to ``mode``
    (True: train, False: eval) for the block, and restores the flags afterwards, even on error.
    BatchNorm-like layers run the block on copies of their running statistics, which are discarded:
    the caller's buffers are never written, so graphs built in the block stay valid for backward.
    """
    flags = [(module, module.training) for module in model.modules()]
    swapped = []
    for module in model.modules():
        if isinstance(module, _NormBase):
            originals = dict(module._buffers)
            swapped.append((module, originals))
            for name, buffer in originals.items():
                if buffer is not None:
                    module._buffers[name] = buffer.clone()
    if mode is not None:
        model.train(mode)
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
        for module, originals in swapped:
            module._buffers.update(originals)


def describe(obj: object, skip: tuple[str, ...] = ("group", "generator", "sampler")) -> str:
    """'Class(a=1, b=2)': the keyword arguments of ``obj``'s constructor with the values it holds."""
    names = [p for p in inspect.signature(type(obj).__init__).parameters if p not in ("self", *skip)]
    values = ", ".join(f"{name}={getattr(obj, name)!r}" for name in names if hasattr(obj, name))
    return f"{type(obj).__name__}({values})"


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or ValueError if it is not a finite number > 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    """``value`` as a float, or ValueError if it is not a finite number >= 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(name: str, value: int, minimum: int = 1) -> int:
    """``value``, or ValueError if it is not an integer >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value``, or ValueError naming the valid choices."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    return value


def check_clip(clip: tuple[float, float] | None) -> tuple[float, float] | None:
    """A valid input range (lo, hi) with lo < hi, or None for no clipping."""
    if clip is None:
        return None
    if len(clip) != 2 or not all(isinstance(c, (int, float)) for c in clip) or not clip[0] < clip[1]:
        raise ValueError(f"clip must be None or a pair (lo, hi) with lo < hi, got {clip!r}")
    return float(clip[0]), float(clip[1])


def check_inside_clip(x: torch.Tensor, clip: tuple[float, float] | None, who: str) -> None:
    """ValueError unless every entry of ``x`` lies in the clip box [lo, hi] (no check when ``clip`` is None).

    An attack clamps its points into the box, so on inputs outside it the returned points would leave
    the eps ball. Overshoots of two ulps at the box's edges pass: bilinear resampling of saturated pixels
    (the deformation augmentation) gives 1 + 2^-23 in float32, as ``x + delta`` itself rounds by as much.
    One min/max pass over the batch."""
    if clip is None or x.numel() == 0:
        return
    lo, hi = clip
    slack = 2 * torch.finfo(x.dtype).eps * max(abs(lo), abs(hi)) if x.dtype.is_floating_point else 0.0
    low, high = (v.item() for v in torch.aminmax(x.detach()))
    if low < lo - slack or high > hi + slack:

        def show(value: float) -> str:  # enough digits to tell an overshoot from the bound it passed
            short = f"{value:.3g}"
            return short if (lo <= float(short) <= hi) == (lo <= value <= hi) else f"{value:.9g}"

        raise ValueError(
            f"{who}: inputs must lie in the clip box [{lo:g}, {hi:g}] (got values in [{show(low)}, {show(high)}]); "
            "pass clip=None for inputs that are not images in [0, 1], or clip=(lo, hi) for their valid range"
        )


def check_logits(logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model output, or ValueError unless it is a 2-D (batch, classes) tensor of logits."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"the model must return a tensor of logits of shape (batch={batch_size}, classes), it returned a "
            f"{type(logits).__name__}; wrap it so that it returns the logits alone, e.g. lambda x: model(x)[0]"
        )
    if logits.dim() != 2 or logits.shape[0] != batch_size:
        raise ValueError(
            f"model output must be 2-D logits of shape (batch={batch_size}, classes), got shape "
            f"{tuple(logits.shape)}; wrap the model so that it returns one row of class scores per input"
        )
    return logits


def randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal draws of ``shape`` in ``like``'s dtype and on its device: from ``generator`` (on the
    generator's own device, then moved: a CPU generator serves CUDA tensors), or from the global RNG."""
    device = like.device if generator is None else generator.device
    return torch.randn(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


def rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform draws in [0, 1), as ``randn``."""
    device = like.device if generator is None else generator.device
    return torch.rand(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


def randint(
    high: int, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Integers uniform in [0, high), as ``randn`` (int64)."""
    device = like.device if generator is None else generator.device
    return torch.randint(0, high, shape, device=device, generator=generator).to(like.device)


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-example values (n,) shaped (n, 1, ..., 1) to broadcast against a batch like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example l2 norms of a batch, shaped (n, 1, ..., 1) to broadcast against it."""
    return per_example(t.flatten(1).norm(dim=1), t)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection of each example of ``delta`` onto the l2 ball of radius ``eps``."""
    return delta * (eps / flat_norm(delta).clamp_min(eps))


def normalize_l2(t: torch.Tensor) -> torch.Tensor:
    """Each example of ``t`` divided by its l2 norm (zero rows stay zero).

    Each example is first divided by its largest entry, since the squares of tiny gradients (VAT's, at
    xi = 1e-6) underflow to a zero norm and would blow the direction up instead of normalizing it."""
    tiny = torch.finfo(t.dtype).tiny
    t = t / per_example(t.flatten(1).abs().amax(dim=1), t).clamp_min(tiny)
    return t / flat_norm(t).clamp_min(tiny)
