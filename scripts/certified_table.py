"""Issue 14's side-by-side table: per run folder, on the run's whole test set, the clean accuracy, the
guaranteed Lipschitz bound L (``lipschitz.lipschitz_upper_bound``) and the certified l2 accuracy at each
radius, by the pairwise rule (f_y - f_j > K[y, j] eps for every j, ``lipschitz.pairwise_lipschitz``: what
``kernel-reg evaluate`` reports) and by the global one (margin > sqrt(2) L eps); beside them, from the
folder's robustness.json (``kernel-reg evaluate`` on its first n test images), the attacked accuracy at
the same radii and the tightness L_lower / L; and the pairwise certified accuracy at every radius in
[0, 1] (steps of 0.01) as a figure, and clean against certified accuracy (a point per run) as another.

    python scripts/certified_table.py runs/fmnist_vgg5/* --eps 0.1 0.25 0.5 [--json out.json] [--plot out.png]
        [--tradeoff tradeoff.png [--target 88 75]]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kernel_reg import lipschitz
from kernel_reg.app.builders import load_run
from kernel_reg.app.plots import plot_certified_curves, plot_certified_tradeoff
from kernel_reg.app.rundir import ROBUSTNESS, atomic_write_text, read_robustness
from kernel_reg.app.suite import eps_key

CURVE = [i / 100 for i in range(101)]  # the radii of the certified-accuracy curve


def row(run_dir: Path, radii: list[float], device: str) -> dict:
    run = load_run(run_dir, device, which="last")
    x, y = run.splits.test_x, run.splits.test_y
    with torch.no_grad():
        bound, pairwise = lipschitz.lipschitz_bounds(run.model, run.splits.input_shape)
        logits = torch.cat([run.model(batch) for batch in x.split(1000)])  # one pass for every column
    clean = float((logits.argmax(1) == y).float().mean())
    radius = lipschitz.certified_radius(logits, y, pairwise)  # per test example
    radius_global = lipschitz.certified_radius(logits, y, bound)
    certified = {eps_key(e): float((radius > e).float().mean()) for e in radii}
    certified_global = {eps_key(e): float((radius_global > e).float().mean()) for e in radii}
    curve = [float((radius > e).float().mean()) for e in CURVE]
    values = dict(run=run_dir.name, n=len(y), clean=clean, lipschitz=bound, certified=certified,
                  certified_global=certified_global, curve=curve)  # fmt: skip
    if (run_dir / ROBUSTNESS).is_file():
        record = read_robustness(run_dir)
        values.update(attacked_n=record.n, attacked={k: record.l2.get(k) for k in certified},
                      tightness=None if not record.lipschitz_lower or not record.lipschitz_bound
                      else record.lipschitz_lower / record.lipschitz_bound)  # fmt: skip
    return values


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(rows: list[dict]) -> str:
    """The side-by-side table of ``row`` results (or of their JSON): per run, clean accuracy on its
    ``n`` test images, L, certified accuracy by the per-pair and the global rule, attacked accuracy on the
    first ``attacked_n`` images, and L_lower / L, at the radii of the first row. Rows written before the
    per-pair rule (no "certified_global") hold the global rule's values under "certified"."""
    keys = list(rows[0]["certified"])
    lines = ["| run | clean | L | " + " | ".join(f"certified {k}" for k in keys) + " | "
             + " | ".join(f"sqrt(2) L rule {k}" for k in keys) + " | "
             + " | ".join(f"attacked {k}" for k in keys) + " | L_lower / L |",
             "|---" * (3 + 3 * len(keys) + 1) + "|"]  # fmt: skip
    for r in rows:
        attacked = r.get("attacked", {})
        tight = "-" if r.get("tightness") is None else f"{r['tightness']:.2f}" if r["tightness"] >= 0.01 else "< 0.01"
        pairwise = r["certified"] if "certified_global" in r else {}
        global_rule = r.get("certified_global", r["certified"])
        lines.append(f"| {r['run']} | {percent(r['clean'])} | {r['lipschitz']:.4g} | "
                     + " | ".join(percent(pairwise.get(k)) for k in keys) + " | "
                     + " | ".join(percent(global_rule[k]) for k in keys) + " | "
                     + " | ".join(percent(attacked.get(k)) for k in keys) + f" | {tight} |")  # fmt: skip
    counts = sorted({r["n"] for r in rows}), sorted({r["attacked_n"] for r in rows if r.get("attacked_n")})
    lines.append(
        f"\nClean and certified on {', '.join(map(str, counts[0]))} test images"
        + (f", attacked on the first {', '.join(map(str, counts[1]))}" if counts[1] else "")
        + "."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eps", nargs="+", type=float, default=[0.1, 0.25, 0.5])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="also draw certified accuracy against the radius")
    parser.add_argument(
        "--tradeoff",
        type=Path,
        default=None,
        help="also draw clean against certified accuracy at the largest --eps, a point per run",
    )
    parser.add_argument("--target", nargs=2, type=float, default=None, metavar=("CLEAN", "CERTIFIED"),
                        help="a star on the trade-off figure at these accuracies in %%")  # fmt: skip
    args = parser.parse_args()
    rows = [row(run, args.eps, args.device) for run in args.runs]
    names = [r["run"] for r in rows]
    for r, run in zip(rows, args.runs):
        if names.count(r["run"]) > 1:  # the same folder name in two studies: the figures' keys must differ
            r["run"] = f"{run.resolve().parent.name}/{run.resolve().name}"
    print(markdown(rows))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(rows, indent=2))
    if args.plot is not None:
        plot_certified_curves(
            {r["run"]: (CURVE, r["curve"]) for r in rows},
            {r["run"]: {float(k): v for k, v in r.get("attacked", {}).items() if v is not None} for r in rows},
            args.plot,
        )
    if args.tradeoff is not None:
        largest = eps_key(max(args.eps))
        target = None if args.target is None else (args.target[0] / 100, args.target[1] / 100)
        points = {r["run"]: (r["clean"], r["certified"][largest]) for r in rows}
        plot_certified_tradeoff(points, max(args.eps), args.tradeoff, target)


if __name__ == "__main__":
    main()
