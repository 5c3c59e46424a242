"""kernel_reg: regularizing deep networks through the RKHS-norm lens (Bietti et al., ICML 2019)."""

from . import attacks, deformations, lipschitz, models, penalties, spectral

__all__ = ["attacks", "deformations", "lipschitz", "models", "penalties", "spectral"]
__version__ = "0.1.0"
