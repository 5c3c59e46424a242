"""The state guard: run a computation on a model and leave the model exactly as it was found."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase


@contextlib.contextmanager
def preserved_state(model: nn.Module | Callable[..., Any], mode: bool | None = None) -> Iterator[None]:
    """Run a block on ``model`` and leave it exactly as it was found (a context manager).

    Saves the train/eval flag of every submodule, optionally switches the whole model to ``mode``
    (True: train, False: eval) for the block, and restores the flags afterwards, even on error.
    BatchNorm-like layers (``_NormBase``: BatchNorm, InstanceNorm, ...) run the block on copies of their
    buffers (running statistics, batch counter), which are discarded: the caller's buffers are never written,
    so graphs built in the block stay valid for backward. Parameters are not guarded.

    Args:
        model: the module to guard; any other callable (a function wrapping a module, e.g.
            ``lambda x: net(x)["logits"]``) has no state of its own to guard, so the block just runs.
        mode: the train/eval flag for the block: True (train), False (eval), or None (default: the
            caller's flags, unchanged).

    Example:
        >>> with preserved_state(model, mode=False), torch.no_grad():
        ...     logits = model(x)  # eval mode here; model.training as before afterwards
    """
    if not isinstance(model, nn.Module):
        yield
        return
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


def uncompiled(model: Any) -> Any:
    """The module that ``torch.compile`` wrapped (``_orig_mod``), else ``model`` itself: code that reads a
    model's layers, or differentiates its input gradient again (a compiled backward refuses
    ``create_graph``), runs on the original module, which shares the compiled one's parameters."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and isinstance(model, nn.Module) else model
