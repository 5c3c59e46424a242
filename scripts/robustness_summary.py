"""The robustness study's table for RESULTS.md, from the committed robustness.json files.

Per run: clean accuracy; at each l2 radius the robust accuracy under the evaluation budget and the lower
one of (budget, twice the budget), which is still an upper bound on the true robust accuracy; at the
middle radius also without the examples the Square check broke; the certified accuracy and the
Lipschitz upper bound. With ``--before REV``, also each radius's robust accuracy as the robustness.json
committed at git revision REV had it (an earlier evaluation of the same weights).

    python scripts/robustness_summary.py results/robustness/fmnist_vgg5 [--before REV]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from kernel_reg.app.config import hyperparameter_text, method_label
from kernel_reg.app.rundir import ROBUSTNESS, Robustness, read_config, read_robustness
from kernel_reg.app.suite import eps_key


def committed(run_dir: Path, revision: str) -> Robustness:
    """A run's evaluation record as committed at a git revision (read through the run-folder module)."""
    text = subprocess.run(
        ["git", "show", f"{revision}:{run_dir / ROBUSTNESS}"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / ROBUSTNESS).write_text(text)
        (Path(folder) / "config.json").write_text((run_dir / "config.json").read_text())
        result = read_robustness(folder)
    assert result is not None
    return result


def row(run_dir: Path, before: str | None) -> tuple[tuple, str]:
    config = read_config(run_dir)
    result = read_robustness(run_dir)
    assert result is not None
    keys = sorted(result.l2, key=float)
    cells = [method_label(config), hyperparameter_text(config) or "-"]
    cells.append(f"{100 * result.clean:.1f}")
    doubled = result.doubled.get("l2", {})
    worst = {key: min(result.l2[key], doubled.get(key, 1.0)) for key in keys}
    cells += [f"{100 * result.l2[key]:.1f} / {100 * worst[key]:.1f}" for key in keys]
    if before is not None:
        earlier = committed(run_dir, before).l2
        cells += [f"{100 * earlier[key]:.1f}" for key in keys]
    square = result.check("l2 score-based attack beats the gradient attacks")
    if square is not None and square.eps is not None and "broken" in square.values:
        cells.append(f"{100 * (worst[eps_key(square.eps)] - square.values['broken'] / result.n):.1f}")
    else:
        cells.append("-")
    cells += [f"{100 * (result.certified_l2 or {}).get(k, 0):.1f}" for k in keys]
    cells.append(f"{result.lipschitz_bound:.3g}" if result.lipschitz_bound else "-")
    return (cells[0], cells[1]), "| " + " | ".join(cells) + " |"


def table(root: str | Path, before: str | None = None) -> str:
    """The table of the evaluated runs under ``root`` (a sweep's experiment folder), with the attack above it."""
    runs = sorted(p.parent for p in Path(root).glob(f"*/{ROBUSTNESS}"))
    first = read_robustness(runs[0])
    assert first is not None
    keys = sorted(first.l2, key=float)
    middle = keys[len(keys) // 2]
    header = ["method", "strength", "clean"] + [f"eps {k}: 1x / worst of 1x, 2x" for k in keys]
    if before is not None:
        header += [f"eps {k}: at {before}" for k in keys]
    header += [f"{middle}: worst incl. Square"] + [f"certified {k}" for k in keys] + ["Lipschitz bound"]
    lines = [f"Attack: {first.described()['l2']}.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [line for _, line in sorted(row(r, before) for r in runs)]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="a sweep's experiment folder, e.g. results/robustness/fmnist_vgg5")
    parser.add_argument("--before", metavar="REV", help="also the robust accuracies committed at this git revision")
    args = parser.parse_args()
    print(table(args.root, args.before))
