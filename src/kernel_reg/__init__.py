"""kernel_reg: regularizing deep networks through the RKHS-norm lens (Bietti et al., ICML 2019).

The library (this package's modules: penalties, attacks, spectral, lipschitz, models, deformations) works on
any ``nn.Module``; the application that runs experiments with it (configuration, run folders, training,
evaluation, reports, sweeps, the model index, the command line) is ``kernel_reg.app``.
"""

from . import attacks, deformations, lipschitz, models, penalties, spectral
from ._source import version as _version

__all__ = ["attacks", "deformations", "lipschitz", "models", "penalties", "spectral"]

__version__ = _version()
