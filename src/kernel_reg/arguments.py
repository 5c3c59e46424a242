"""Argument checks, each naming the argument and what would be valid, and the repr of configured objects."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch


def describe(obj: object, skip: tuple[str, ...] = ("group", "generator", "sampler")) -> str:
    """'Class(a=1, b=2)': the keyword arguments of ``obj``'s constructor with the values it holds.

    The constructor is the first in the class's method order that names its arguments (a subclass that
    passes ``**arguments`` on shows its parent's), less those in the class's ``fixed_arguments``.

    Args:
        obj: the configured object; an argument is shown when ``obj`` has an attribute of its name.
        skip: argument names never shown (default: "group", "generator", "sampler").

    Returns:
        The repr string.
    """
    fixed = (*skip, *getattr(type(obj), "fixed_arguments", ()))
    for cls in type(obj).__mro__:
        parameters = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    names = [p.name for p in parameters if p.name != "self" and p.name not in fixed]
    values = ", ".join(f"{name}={getattr(obj, name)!r}" for name in names if hasattr(obj, name))
    return f"{type(obj).__name__}({values})"


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or ValueError (naming ``name``) if it is not a finite int or float > 0 (bool refused)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    """``value`` as a float, or ValueError (naming ``name``) if it is not a finite int or float >= 0 (bool refused)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(name: str, value: int, minimum: int = 1) -> int:
    """``value``, or ValueError (naming ``name``) if it is not an int >= ``minimum`` (default 1; bool refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value``, or ValueError naming ``name`` and the valid ``choices`` if it is not one of them."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    return value


def check_clip(clip: tuple[float, float] | None) -> tuple[float, float] | None:
    """A valid input range (lo, hi) with lo < hi, as floats, or None for no clipping.

    Raises:
        ValueError: unless ``clip`` is None or a pair of numbers with lo < hi.
    """
    if clip is None:
        return None
    numbers = isinstance(clip, (tuple, list)) and all(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip
    )
    if not numbers or len(clip) != 2 or not clip[0] < clip[1]:
        raise ValueError(f"clip must be None or a pair (lo, hi) with lo < hi, got {clip!r}")
    return float(clip[0]), float(clip[1])


def check_inside_clip(x: torch.Tensor, clip: tuple[float, float] | None, who: str) -> None:
    """ValueError unless every entry of ``x`` lies in the clip box [lo, hi] (no check when ``clip`` is None).

    An attack clamps its points into the box, so on inputs outside it the returned points would leave
    the eps ball. Overshoots of 2 * machine-eps * max(|lo|, |hi|) (two ulps at 1) pass: bilinear resampling of
    saturated pixels (the deformation augmentation) gives 1 + 2^-23 in float32, as ``x + delta`` itself
    rounds by as much. One min/max pass over the batch.

    Args:
        x: the inputs, any shape.
        clip: the box (lo, hi), or None.
        who: the name of the caller, for the message.
    """
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


def check_batch(who: str, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """ValueError naming ``who`` unless ``x`` is a batch (n, *shape) of n >= 1 examples and ``y`` (when
    given) its n integer labels, one per example (see ``check_labels``)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{who}: x must be a tensor, a batch (n, *shape) of examples, got a {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{who}: x must be a batch (n, *shape) of examples, got shape {tuple(x.shape)}: one unbatched "
            "example? pass x.unsqueeze(0) (and y.view(1))"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{who}: x holds no examples (shape {tuple(x.shape)}); give at least one")
    if y is not None:
        check_labels(who, y, x.shape[0])


def check_labels(who: str, y: torch.Tensor, n: int, classes: int | None = None) -> None:
    """ValueError naming ``who`` unless ``y`` holds ``n`` integer class indices, shape (n,), in
    [0, ``classes``) when that is given."""
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        kind = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{who}: y must hold integer class indices (torch.long), got {kind}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"{who}: y must have shape ({n},), one label per example of x, got shape {tuple(y.shape)}")
    if classes is not None and n:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise ValueError(
                f"{who}: y must lie in [0, {classes}), the model's {classes} classes, got values in [{low}, {high}]"
            )


def check_logits(logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model output, or ValueError unless it is a 2-D (batch, classes) tensor of logits.

    Shape:
        logits: (batch_size, k); returned as is.
    """
    if not isinstance(logits, torch.Tensor):
        if isinstance(logits, dict):
            keys = ", ".join(repr(k) for k in list(logits)[:5])
            advice = f'lambda x: model(x)["logits"] (its keys: {keys})'
        else:
            advice = "lambda x: model(x)[0] (the logits' position in what it returns)"
        raise ValueError(
            f"the model must return a tensor of logits of shape (batch={batch_size}, classes), it returned a "
            f"{type(logits).__name__}; pass a function that returns the logits alone, e.g. {advice}"
        )
    if logits.dim() != 2 or logits.shape[0] != batch_size:
        raise ValueError(
            f"model output must be 2-D logits of shape (batch={batch_size}, classes), got shape "
            f"{tuple(logits.shape)}; wrap the model so that it returns one row of class scores per input"
        )
    return logits
