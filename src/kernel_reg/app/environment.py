"""What a run was computed with: package version, git commit, torch and Python versions, device (the CPU's
model), threads, the instruction set of torch's CPU kernels and the determinism settings; recorded in the
run folder each time training starts or resumes."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import kernel_reg
from kernel_reg._source import SOURCE_TREE

CPUINFO = Path("/proc/cpuinfo")


def package_version() -> str:
    """The version of the kernel-reg code that runs (``kernel_reg.__version__``: its source tree's
    pyproject.toml from a checkout, else the installed metadata), or "unknown"."""
    return kernel_reg.__version__


def git_state(tree: Path = SOURCE_TREE) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout kernel_reg is imported from; (None, None) outside one."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    if not (tree / ".git").exists():
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name as Linux reports it (``model name`` in /proc/cpuinfo), else what ``platform``
    says (often only the architecture, e.g. "x86_64")."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except (OSError, UnicodeDecodeError):
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """ "cpu: <the CPU's model>" or "cuda: <the GPU's name>"."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return f"{device.type}: {name}"


def machine(device: torch.device) -> str:
    """What fixes the floating-point results of a computation on ``device`` besides the code: the device's
    name and, on the CPU, the instruction set of torch's kernels and the thread count ("cpu: AMD EPYC, AVX2,
    1 thread"; "cuda: NVIDIA H100 80GB HBM3")."""
    if device.type != "cpu":
        return device_name(device)
    threads = torch.get_num_threads()
    return f"{device_name(device)}, {torch.backends.cpu.get_cpu_capability()}, {threads} thread{'s' * (threads > 1)}"


@dataclass(frozen=True)
class Environment:
    """The software and machine one training session ran with, from ``from_epoch`` on; ``data_override``:
    why it went on although its data differed from the run's record (``--allow-other-data``), else None;
    ``cpu_capability``: the instruction set torch's CPU kernels use ("AVX2", "AVX512", ...; None in records
    made before 0.2.3), which with the thread count fixes the order of a CPU training's floating-point sums."""

    package_version: str
    commit: str | None
    dirty: bool | None
    torch: str
    python: str
    platform: str
    device: str
    threads: int
    deterministic_algorithms: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    from_epoch: int = 0
    data_override: str | None = None
    cpu_capability: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Environment:
        return cls(**values)


def capture(device: torch.device, from_epoch: int = 0, data_override: str | None = None) -> Environment:
    """The environment of this process, training on ``device``."""
    commit, dirty = git_state()
    return Environment(
        package_version=package_version(),
        commit=commit,
        dirty=dirty,
        torch=torch.__version__,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        device=device_name(device),
        threads=torch.get_num_threads(),
        deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        from_epoch=from_epoch,
        data_override=data_override,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
