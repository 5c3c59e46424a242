"""The journal of an evaluation in progress: each batch's result as soon as it is known, on disk, so that an
interrupted evaluation, run again, resumes where it stopped and returns what an uninterrupted one returns.

The journal is a folder: a ``key`` file naming the evaluation it belongs to (weights, data, settings, device,
threads) and one file per batch done, written whole or not at all, holding the batch's per-example result,
the state of the attacks' random generator after it (restoring that state when a batch is skipped keeps
every later draw what it would have been) and the machine that computed it (``environment.machine``: a
journal may be resumed on another kind of CPU, whose kernels round differently, and the record says so).
A journal of another evaluation, or one that cannot be read, is cleared and the evaluation starts afresh:
a journal is never trusted beyond its key."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .rundir import atomic_torch_save, atomic_write_text

JOURNAL = "robustness.journal"  # beside the robustness.json it leads to
FORMAT = 1
KEY = "key"
UNRECORDED = "not recorded"  # the machine of a batch journaled before 0.2.4


def evaluation_key(tensors: Iterable[tuple[str, torch.Tensor]], settings: dict[str, Any]) -> str:
    """SHA-256 of named tensors (their names, dtypes, shapes and bytes, in the order given), the settings
    (as sorted JSON) and what changes floating-point results: the devices and the thread count."""
    digest = hashlib.sha256()
    devices = set()
    for name, tensor in tensors:
        devices.add(tensor.device.type)
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(f"format {FORMAT}, devices {sorted(devices)}, threads {torch.get_num_threads()}".encode())
    return digest.hexdigest()


def discard_journal(path: Path) -> None:
    """Remove a journal once the record it led to is written (or whatever stands at its path)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Journal:
    """Batches of one evaluation: ``batch(stage, index, compute)`` returns the recorded result of that batch
    (and restores the generator to its state after it) or computes it and records it.

    Args:
        path: the journal folder (created).
        key: the evaluation it belongs to (``evaluation_key``).
        generator: the attacks' generator, whose state each entry keeps.
        log: receives one line when a journal is resumed or cleared.
        machine: what computes the batches this process adds (``environment.machine``).
    """

    def __init__(
        self, path: Path, key: str, generator: torch.Generator, log: Callable[[str], None] = lambda _: None,
        machine: str = UNRECORDED,
    ) -> None:  # fmt: skip
        self.path, self.generator, self.machine = path, generator, machine
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.computed_on: dict[str, str] = {}  # batch -> its machine
        self._asked: set[str] = set()
        if path.exists():
            try:
                if (path / KEY).read_text() != key:
                    log(f"{path.name}: the journal of another evaluation (other weights, data, settings, device or "
                        "threads); starting afresh")  # fmt: skip
                else:
                    for entry in sorted(path.glob("*.pt")):
                        saved = torch.load(entry, weights_only=True)
                        self.entries[saved["batch"]] = (saved["result"], saved["generator"])
                        self.computed_on[saved["batch"]] = saved.get("machine", UNRECORDED)
                    others = ["a machine not recorded" if m == UNRECORDED else m for m in self.machines if m != machine]
                    log(f"{path.name}: resuming, {len(self.entries)} batches already evaluated"
                        + (f" (computed on {'; '.join(others)}; this one is {machine})" if others else ""))  # fmt: skip
                    return
            except Exception as error:  # noqa: BLE001 (any damage: the evaluation is redone, never read from it)
                self.entries, self.computed_on = {}, {}
                log(f"{path.name}: unreadable ({type(error).__name__}: {error}); starting afresh")
            discard_journal(path)
        path.mkdir(parents=True)
        atomic_write_text(path / KEY, key)

    def batch(self, stage: str, index: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The result of batch ``index`` of ``stage`` (a name unique within the evaluation): from the journal
        (on the CPU), or from ``compute()``."""
        name = f"{stage}#{index}"
        if name in self._asked:
            raise AssertionError(f"batch {name} asked for twice in one evaluation: stage names must be unique")
        self._asked.add(name)
        if name in self.entries:
            result, state = self.entries[name]
            self.generator.set_state(state)
            return result
        result = compute()
        kept, state = result.detach().cpu(), self.generator.get_state()
        self.entries[name], self.computed_on[name] = (kept, state), self.machine
        entry = self.path / f"{len(self.entries):06d}.pt"
        atomic_torch_save({"batch": name, "result": kept, "generator": state, "machine": self.machine}, entry)
        return result

    @property
    def machines(self) -> list[str]:
        """The machines that computed the journal's batches, each once, in the order of their first batch."""
        return list(dict.fromkeys(self.computed_on.values()))
