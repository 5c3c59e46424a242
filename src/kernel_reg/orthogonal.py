"""Moved to ``kernel_reg.lipschitz.orthogonal`` in 0.2; importable from here, with a DeprecationWarning, until 0.3."""

from .deprecation import moved_module

__getattr__ = moved_module(__name__, "kernel_reg.lipschitz.orthogonal")
