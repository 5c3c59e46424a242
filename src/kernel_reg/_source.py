"""Where the imported kernel_reg code lives: the repository root of a checkout, and the code's version."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parents[2]  # src/kernel_reg/_source.py -> the repository root


def version() -> str:
    """The version of the code that runs: its source tree's pyproject.toml when imported from a checkout
    (an installed copy's metadata can name another version: an editable install of one checkout and
    PYTHONPATH pointing at another), else the installed metadata; "unknown" when neither says."""
    pyproject = SOURCE_TREE / "pyproject.toml"
    if pyproject.is_file():
        project = re.search(r"^\[project\]$(.*?)(?=^\[|\Z)", pyproject.read_text(), flags=re.M | re.S)
        name = project and re.search(r'^name = "kernel-reg"$', project.group(1), flags=re.M)
        found = project and re.search(r'^version = "([^"]+)"$', project.group(1), flags=re.M)
        if name and found:
            return found.group(1)
    try:
        return metadata.version("kernel-reg")
    except metadata.PackageNotFoundError:
        return "unknown"
