"""kernel_reg: regularizing deep networks through the RKHS-norm lens (Bietti et al., ICML 2019)."""

from . import attacks, deformations, lipschitz, models, penalties, spectral
from .environment import package_version

__all__ = ["attacks", "deformations", "lipschitz", "models", "penalties", "spectral"]
__version__ = package_version()
