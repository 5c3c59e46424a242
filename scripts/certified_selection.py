"""Issue 29, item 5 (scripts/certified_study.sh runs the trainings): the certified recipe chosen on the
validation split, and the chosen recipe against deel-torchlip's layers on the test set.

``select`` reads each candidate's certified_val.json (``kernel-reg certify --split val``: clean and
certified accuracy on the validation examples carved from the training pool) and chooses by the rule fixed
before any number is seen: the smallest shortfall from the goal (clean C, certified K at radius r),

    shortfall = max(0, C - clean) + max(0, K - certified_r),

ties broken by the higher certified accuracy. ``final`` groups the run folders by name without their
``_s<k>`` suffix (one seed each) and gives, per group, the mean and the t-interval at n - 1 degrees of
freedom of the clean, certified (per pair of classes, certified.json) and attacked (robustness.json)
accuracy, which must come from the same test images; and the paired difference of the first group and
each other, seed by seed (same k: the same validation examples and training order).

    python scripts/certified_selection.py select runs/certified_select/fmnist_vgg5/* [--goal 88 75 --radius 0.5]
    python scripts/certified_selection.py final runs/certified_final/fmnist_vgg5/* --reference w32_m1.0 [--json F]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from kernel_reg.app.rundir import atomic_write_text, read_certification, read_robustness
from kernel_reg.app.statistics import Paired, paired
from kernel_reg.app.suite import eps_key

SEED = re.compile(r"^(?P<group>.+)_s(?P<seed>\d+)$")


def shortfall(clean: float, certified: float, goal: tuple[float, float]) -> float:
    """Points short of the goal (clean, certified), both in percent; 0 when it is reached."""
    return max(0.0, goal[0] - clean) + max(0.0, goal[1] - certified)


def select(runs: list[Path], goal: tuple[float, float], radius: float) -> tuple[list[dict], str]:
    """One row per candidate (name, clean, certified at ``radius``, shortfall; in percent), best first,
    and the chosen name. ValueError naming a candidate without its validation record."""
    rows = []
    for run in runs:
        record = read_certification(run, "val")
        if record is None:
            raise ValueError(f"{run} has no certified_val.json: run kernel-reg certify {run} --split val first")
        clean, certified = 100 * record.clean, 100 * at_radius(record.pairwise, radius, run / "certified_val.json")
        rows.append(dict(run=run.name, n=record.n, clean=clean, certified=certified,
                         shortfall=shortfall(clean, certified, goal)))  # fmt: skip
    rows.sort(key=lambda r: (r["shortfall"], -r["certified"]))
    return rows, rows[0]["run"]


def at_radius(values: dict[str, float], radius: float, source: Path) -> float:
    """``values`` at ``radius``; ValueError naming the radii ``source`` holds when it lacks that one."""
    if eps_key(radius) not in values:
        raise ValueError(f"{source} holds radii {', '.join(values)}, not {radius:g}; certify (or attack) at it")
    return values[eps_key(radius)]


def seed_values(run: Path, radii: list[float]) -> dict[str, float]:
    """Clean, certified and attacked accuracy (percent) of one run on the same test images."""
    certification, robustness = read_certification(run), read_robustness(run)
    if certification is None or robustness is None:
        raise ValueError(f"{run} needs certified.json and robustness.json (scripts/certified_study.sh evaluate)")
    if certification.n != robustness.n:
        raise ValueError(f"{run}: certified on {certification.n} test images but attacked on {robustness.n}; "
                         "measure both on the same images (kernel-reg evaluate --eval-n-test 0)")  # fmt: skip
    values = {"clean": 100 * certification.clean}
    for eps in radii:
        values[f"certified {eps_key(eps)}"] = 100 * at_radius(certification.pairwise, eps, run / "certified.json")
        values[f"attacked {eps_key(eps)}"] = 100 * at_radius(robustness.l2, eps, run / "robustness.json")
    return values


def final(runs: list[Path], radii: list[float], reference: str) -> dict[str, dict[str, dict[int, float]]]:
    """{group: {measure: {seed: value}}} from run folders named <group>_s<seed>, ``reference`` first."""
    groups: dict[str, dict[str, dict[int, float]]] = {reference: {}}
    for run in runs:
        match = SEED.match(run.name)
        if match is None:
            raise ValueError(f"{run}: a final run folder is named <recipe>_s<seed>, e.g. w32_m1.0_s0")
        for measure, value in seed_values(run, radii).items():
            groups.setdefault(match["group"], {}).setdefault(measure, {})[int(match["seed"])] = value
    if not groups[reference]:
        raise ValueError(f"no run folder of the reference {reference!r} among {[run.name for run in runs]}")
    return groups


def cell(c: Paired) -> str:
    return f"{c.mean:.1f} [{c.low:.1f}, {c.high:.1f}]"


def final_table(groups: dict[str, dict[str, dict[int, float]]]) -> str:
    measures = list(next(iter(groups.values())))
    lines = ["| recipe | seeds | " + " | ".join(measures) + " |", "|---|---|" + "---|" * len(measures)]
    for name, values in groups.items():
        seeds = len(values["clean"])
        if seeds < 2:
            raise ValueError(f"recipe {name} has {seeds} seed; its interval needs at least 2")
        lines.append(f"| {name} | {seeds} | " + " | ".join(cell(paired(list(values[m].values()))) for m in measures)
                     + " |")  # fmt: skip
    reference, *others = groups
    for name in others:
        common = sorted(set(groups[reference]["clean"]) & set(groups[name]["clean"]))
        diffs = [paired([groups[reference][m][s] - groups[name][m][s] for s in common]) for m in measures]
        lines.append(f"| {reference} - {name} (paired) | {len(common)} | " + " | ".join(map(cell, diffs)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("select", "final"))
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--goal", nargs=2, type=float, default=(88.0, 75.0), metavar=("CLEAN", "CERTIFIED"))
    parser.add_argument("--radius", type=float, default=0.5, help="the goal's radius (select)")
    parser.add_argument("--eps", nargs="+", type=float, default=[0.1, 0.25, 0.5], help="radii (final)")
    parser.add_argument("--reference", default=None, help="(final) the chosen recipe, compared with each other one")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        execute(args, parser)
    except ValueError as error:
        raise SystemExit(f"certified_selection.py {args.stage}: {error}") from None


def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders among ``paths`` (a glob may also match a report file, which is skipped); ValueError
    naming a path that does not exist (a typo would otherwise drop a candidate unseen)."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise ValueError(f"no such run folder: {', '.join(missing)}")
    runs = sorted(path for path in paths if path.is_dir())
    if not runs:
        raise ValueError(f"none of {', '.join(map(str, paths))} is a run folder")
    return runs


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    runs = run_folders(args.runs)
    if args.stage == "select":
        rows, chosen = select(runs, tuple(args.goal), args.radius)
        print(f"| candidate | validation examples | clean | certified {args.radius} | shortfall |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['n']} | {r['clean']:.2f} | {r['certified']:.2f} | {r['shortfall']:.2f} |")
        print(f"\nchosen: {chosen}")
        result: object = dict(goal=args.goal, radius=args.radius, candidates=rows, chosen=chosen)
    else:
        if args.reference is None:
            parser.error("final needs --reference, the chosen recipe's name (without _s<seed>)")
        groups = final(runs, args.eps, args.reference)
        print(final_table(groups))
        result = groups
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
