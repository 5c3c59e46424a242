"""Optional dependencies: what only some users need comes with an extra of the package (pyproject.toml)."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``module``, imported; MissingExtra naming ``pip install 'kernel-reg[extra]'`` when it is not installed.

    Example:
        >>> yaml = require("yaml", "sweep", "a YAML grid file")
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{purpose} needs the package {module!r}, which is not installed: it comes with kernel-reg's "
            f"'{extra}' extra, pip install 'kernel-reg[{extra}]' (or kernel-reg[all])"
        ) from None
