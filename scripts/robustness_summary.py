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
import json
import re
import subprocess
from pathlib import Path

from kernel_reg.config import hyperparameter_text, method_label
from kernel_reg.rundir import read_config

SQUARE = re.compile(r"eps (\S+): Square \(\d+ queries\) broke (\d+) of the (\d+) examples")


def committed(path: Path, revision: str) -> dict:
    """A file's JSON content at a git revision."""
    text = subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True, text=True, check=True).stdout
    return json.loads(text)


def row(run_dir: Path, before: str | None) -> tuple[tuple, str]:
    config = read_config(run_dir)
    result = json.loads((run_dir / "robustness.json").read_text())
    keys = sorted(result["l2"], key=float)
    cells = [method_label(config), hyperparameter_text(config) or "-"]
    cells.append(f"{100 * result['clean']:.1f}")
    doubled = result.get("doubled", {}).get("l2", {})
    worst = {key: min(result["l2"][key], doubled.get(key, 1.0)) for key in keys}
    cells += [f"{100 * result['l2'][key]:.1f} / {100 * worst[key]:.1f}" for key in keys]
    if before is not None:
        earlier = committed(run_dir / "robustness.json", before)["l2"]
        cells += [f"{100 * earlier[key]:.1f}" for key in keys]
    square = [m for c in result.get("masking_checks", []) if (m := SQUARE.search(c["detail"]))]
    if square:
        eps, broken, _ = square[0].groups()
        cells.append(f"{100 * (worst[eps] - int(broken) / result['n']):.1f}")
    else:
        cells.append("-")
    cells += [f"{100 * (result['certified_l2'] or {}).get(k, 0):.1f}" for k in keys]
    cells.append(f"{result['lipschitz_bound']:.3g}" if result.get("lipschitz_bound") else "-")
    return (cells[0], cells[1]), "| " + " | ".join(cells) + " |"


def main(root: str, before: str | None) -> None:
    runs = sorted(p.parent for p in Path(root).glob("*/robustness.json"))
    first = json.loads((runs[0] / "robustness.json").read_text())
    keys = sorted(first["l2"], key=float)
    middle = keys[len(keys) // 2]
    print(f"Attack: {first['attacks']['l2']}.\n")
    header = ["method", "strength", "clean"] + [f"eps {k}: 1x / worst of 1x, 2x" for k in keys]
    if before is not None:
        header += [f"eps {k}: at {before}" for k in keys]
    header += [f"{middle}: worst incl. Square"] + [f"certified {k}" for k in keys] + ["Lipschitz bound"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for _, line in sorted(row(r, before) for r in runs):
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="a sweep's experiment folder, e.g. results/robustness/fmnist_vgg5")
    parser.add_argument("--before", metavar="REV", help="also the robust accuracies committed at this git revision")
    args = parser.parse_args()
    main(args.root, args.before)
