"""Deprecations: names and arguments that moved keep working, with a DeprecationWarning, for one minor version.

The policy (CHANGELOG.md): a public name that moves or is renamed in version 0.N stays importable from its old
place, and an argument keeps its old name and position, until 0.N+1; each use warns and names the new place.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

REMOVED_IN = "0.3"

F = TypeVar("F", bound=Callable[..., Any])


def warn(message: str, stacklevel: int = 3) -> None:
    """A DeprecationWarning that says when the old form goes."""
    warnings.warn(f"{message}; the old form goes in kernel-reg {REMOVED_IN}", DeprecationWarning, stacklevel=stacklevel)


def moved_names(module: str, new_places: Mapping[str, str], stacklevel: int = 3) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that serves each name of ``new_places`` from the module named there;
    ``stacklevel`` points the warning at the importing line (one more when a module's own ``__getattr__``
    calls this one).

    Example (in kernel_reg/spectral.py):
        >>> __getattr__ = moved_names(__name__, {"certified_accuracy": "kernel_reg.lipschitz"})
    """

    def __getattr__(name: str) -> Any:
        place = new_places.get(name)
        if place is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn(f"{module}.{name} moved to {place}.{name}: import it from there", stacklevel=stacklevel)
        return getattr(importlib.import_module(place), name)

    return __getattr__


def moved_module(module: str, new_module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that serves every name from ``new_module``, where the module moved.

    Example (in kernel_reg/config.py, moved to kernel_reg/app/config.py):
        >>> __getattr__ = moved_module(__name__, "kernel_reg.app.config")
    """

    def __getattr__(name: str) -> Any:
        target = importlib.import_module(new_module)
        if name.startswith("__") or not hasattr(target, name):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn(f"{module} moved to {new_module}: import {name} from there")
        return getattr(target, name)

    return __getattr__


def old_arguments(positional: Sequence[str] = (), renamed: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Let ``__init__`` (keyword-only now) take the arguments of its earlier signature: positional ones, read as
    the names ``positional`` in that order, and keywords renamed since (``renamed``: old -> new); each warns.
    Giving an argument twice (by position or old name, and by its name) is a TypeError."""
    renamed = dict(renamed or {})

    def decorate(init: F) -> F:
        @functools.wraps(init)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            owner = type(self).__name__
            messages = []
            if args:
                if len(args) > len(positional):
                    raise TypeError(
                        f"{owner}() takes keyword arguments only ({len(args)} given by position; "
                        f"the earlier signature took at most {len(positional)}: {', '.join(positional)})"
                    )
                names = positional[: len(args)]
                messages.append(
                    f"{owner}() takes keyword arguments only: pass {', '.join(f'{n}=' for n in names)} by name"
                )
                for name, value in zip(names, args):
                    if name in kwargs:
                        raise TypeError(f"{owner}() got {name!r} both by position and by name")
                    kwargs[name] = value
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}() got both {old!r} (its old name) and {new!r}: give {new!r} only")
                    messages.append(f"{owner}({old}=...) is now {owner}({new}=...)")
                    kwargs[new] = kwargs.pop(old)
            if messages:
                warn("; ".join(messages))
            return init(self, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
