"""kernel_reg: regularizing deep networks through the RKHS-norm lens (Bietti et al., ICML 2019).

The library (this package's modules: penalties, attacks, spectral, lipschitz, models, deformations) works on
any ``nn.Module``; the application that runs experiments with it (configuration, run folders, training,
evaluation, reports, sweeps, the model index, the command line) is ``kernel_reg.app``.
"""

import re
from importlib import metadata
from pathlib import Path

from . import attacks, deformations, lipschitz, models, penalties, spectral

__all__ = ["attacks", "deformations", "lipschitz", "models", "penalties", "spectral"]


def _version() -> str:
    """The version of the code that runs: its source tree's pyproject.toml when imported from a checkout
    (an installed copy's metadata can name another version: an editable install of one checkout and
    PYTHONPATH pointing at another), else the installed metadata; "unknown" when neither says."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        project = re.search(r"^\[project\]$(.*?)(?=^\[|\Z)", pyproject.read_text(), flags=re.M | re.S)
        name = project and re.search(r'^name = "kernel-reg"$', project.group(1), flags=re.M)
        version = project and re.search(r'^version = "([^"]+)"$', project.group(1), flags=re.M)
        if name and version:
            return version.group(1)
    try:
        return metadata.version("kernel-reg")
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()
