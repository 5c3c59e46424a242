"""One-off backfill of the records that the published runs (trained before provenance records) lack; kept
as the record of how they were made. Run from the repository root with Debian's dataset-fashion-mnist
installed (every published run trained on the full Fashion-MNIST: each draws more examples than the
embedded subset holds).

    python scripts/backfill_provenance.py configs       # machine paths out of configs; provenance.json
    python scripts/backfill_provenance.py examples RUN.. # per-image flags of robustness.json, where they
                                                         # reproduce its numbers exactly
    python scripts/backfill_provenance.py examples-no-attacks RUN..  # the same for clean and certified only
    python scripts/backfill_provenance.py certify RUN..  # certified.json on all 10,000 test images

Nothing is written unless the numbers measured again equal the recorded ones; every mismatch is printed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from kernel_reg.app.builders import load_run
from kernel_reg.app.data import load_dataset
from kernel_reg.app.evaluation import certify_model
from kernel_reg.app.metrics import certified_radii, robust_correct, unchanged
from kernel_reg.app.rundir import (
    CONFIG,
    Provenance,
    atomic_write_text,
    pack_bits,
    read_provenance,
    read_robustness,
    write_certification,
    write_provenance,
    write_robustness,
)
from kernel_reg.app.suite import build_eval_attack, eps_key
from kernel_reg.lipschitz import lipschitz_bounds

RESULTS = Path("results")
NOTE = (
    "backfilled on 2026-12-06 by scripts/backfill_provenance.py: the run trained before provenance records; "
    "its data are Debian's dataset-fashion-mnist files, the full set (the run draws more examples than the "
    "embedded subset holds), hashed here; the training environment was not recorded"
)


def configs() -> None:
    record = load_dataset("fashion-mnist", None).record
    for path in sorted(RESULTS.rglob(CONFIG)):
        values = json.loads(path.read_text())
        if values.get("data_dir") not in (None, "embedded") or Path(values.get("root", "")).is_absolute():
            print(f"{path}: data_dir {values['data_dir']!r} -> null, an absolute root {values['root']!r} left out")
            values["data_dir"] = None
            if Path(values["root"]).is_absolute():
                del values["root"]
            atomic_write_text(path, json.dumps(values, indent=2, sort_keys=True))
        if read_provenance(path.parent) is None:
            write_provenance(path.parent, Provenance(record, (), NOTE))


def counts_equal(recorded: float, flags: torch.Tensor) -> bool:
    return round(recorded * len(flags)) == int(flags.sum())


def examples(run_dir: Path, attacks: bool = True) -> None:
    """Per-image flags of a published robustness.json: clean and certified measured again, the attacks
    (``attacks``) rerun with the recorded settings and seed; flags kept only for the numbers they reproduce
    exactly."""
    began = time.perf_counter()
    record = read_robustness(run_dir)
    which = "best" if record.weights == "best-validation" else "last"
    run = load_run(run_dir, "cpu", record.n, which)
    model, x, y = run.model.requires_grad_(False), run.splits.test_x, run.splits.test_y
    settings = record.settings
    flags: dict[str, torch.Tensor] = {"clean": robust_correct(model, unchanged, x, y, settings.batch_size)}
    recorded: dict[str, float] = {"clean": record.clean}
    if record.certified_l2 is not None:  # by the rule the record used
        bound, pairwise = lipschitz_bounds(model, run.splits.input_shape)
        radius = certified_radii(model, x, y, pairwise if record.certified_rule == "pairwise" else bound, 500)
        for k, value in record.certified_l2.items():
            flags[f"certified_l2/{k}"], recorded[f"certified_l2/{k}"] = radius > float(k), value
    generator = settings.generator()
    for norm, radii in (("l2", settings.l2_eps), ("linf", settings.linf_eps)) if attacks else ():
        for eps in radii:
            attack = build_eval_attack(norm, eps, settings, 1, generator)
            key = f"{norm}/{eps_key(eps)}"
            flags[key] = robust_correct(model, attack, x, y, settings.batch_size)
            recorded[key] = (record.l2 if norm == "l2" else record.linf)[eps_key(eps)]
    kept, differ = {}, []
    for key, value in flags.items():
        if counts_equal(recorded[key], value):
            kept[key] = pack_bits(value)
        else:
            differ.append(f"{key}: recorded {recorded[key]:.4f}, now {int(value.sum()) / len(value):.4f}")
    write_robustness(run_dir, dataclasses.replace(record, per_example=kept, data=run.data))
    print(f"{run_dir}: {len(kept)} of {len(flags)} reproduced ({time.perf_counter() - began:.0f} s)"
          + ("; differ: " + "; ".join(differ) if differ else ""), flush=True)  # fmt: skip


def certify(run_dir: Path) -> None:
    run = load_run(run_dir, "cpu", None, "best")
    result = certify_model(run.model, run.splits.test_x, run.splits.test_y, (0.1, 0.25, 0.5), run.splits.input_shape)
    result = dataclasses.replace(result, epoch=run.epoch, weights=run.weights, data=run.data)
    write_certification(run_dir, result)
    cells = ", ".join(f"{k}: {100 * v:.2f}" for k, v in result.pairwise.items())
    print(f"{run_dir}: clean {100 * result.clean:.2f}, L {result.lipschitz_bound:.6f}, certified {cells}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    command, runs = sys.argv[1], [Path(p) for p in sys.argv[2:]]
    if command == "configs":
        configs()
    for run in runs:
        if command == "examples-no-attacks":
            examples(run, attacks=False)
        else:
            {"examples": examples, "certify": certify}[command](run)
