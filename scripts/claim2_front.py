"""The front-defining models of claim 2 (issue 29, item 4), and the commands that evaluate them on every test
image.

A setting defines the front at a radius when no other setting matches or beats both its mean clean accuracy
and its mean robust accuracy there (over its seeds; one of the two strictly): the points of the fronts that
``kernel-reg report`` draws. For each setting on the front at any recorded l2 radius, the run of its first
training subset whose weights are here (``checkpoint.pt`` where it trained, ``weights.pt`` where published)
is evaluated again, with the attack settings its record used, on all the test images, into ``--out`` (the
records of the first 2,000 images stay where they are); a setting none of whose runs has weights here is
named in a comment, and the exit status is then 1:

    python scripts/claim2_front.py [results/robustness_claim2/fmnist_vgg5] \\
        [--out results/robustness_claim2/full_test] [--device cuda] [--missing] | bash

It prints the front at each radius as comments, then one ``kernel-reg evaluate`` command a line.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path

from kernel_reg.app.rundir import CHECKPOINT, ROBUSTNESS, WEIGHTS, saved_weights
from kernel_reg.app.studies import RunSummary, collect_runs, pool_settings, seed_of
from kernel_reg.app.suite import to_flags

Point = tuple[float, float]  # (mean clean accuracy, mean robust accuracy)


def front(points: Mapping[str, Point]) -> list[str]:
    """The names whose point no other point dominates (at least as high in both coordinates, higher in one),
    in the order given."""

    def dominates(a: Point, b: Point) -> bool:
        return a[0] >= b[0] and a[1] >= b[1] and a != b

    return [name for name, p in points.items() if not any(dominates(q, p) for q in points.values())]


def fronts(settings: Mapping[str, list[RunSummary]]) -> dict[str, list[str]]:
    """Per l2 radius every setting was evaluated at: the settings on its front (setting keys)."""
    radii = set.intersection(*(set(r.robustness.l2) for runs in settings.values() for r in runs))  # type: ignore[union-attr]

    def point(runs: list[RunSummary], radius: str) -> Point:
        clean = statistics.mean(r.robustness.clean for r in runs)  # type: ignore[union-attr]
        return clean, statistics.mean(r.robustness.l2[radius] for r in runs)  # type: ignore[union-attr]

    return {radius: front({key: point(runs, radius) for key, runs in settings.items()})
            for radius in sorted(radii, key=float)}  # fmt: skip


def command(run: RunSummary, out: str, device: str | None) -> str:
    """``kernel-reg evaluate`` of ``run`` with its record's attack settings, on every test image, into ``out``."""
    record = run.robustness
    assert record is not None
    settings = dataclasses.replace(record.settings, n_test=None)
    words = ["kernel-reg", "evaluate", str(run.path), *to_flags(settings), "--out", out]
    if record.weights == "last":
        words += ["--weights", "last"]
    if device:
        words += ["--device", device]
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", nargs="?", default="results/robustness_claim2/fmnist_vgg5", type=Path)
    parser.add_argument("--out", default="results/robustness_claim2/full_test", help="where the records go")
    parser.add_argument("--device", help="e.g. cuda (default: the evaluation's own choice)")
    parser.add_argument(
        "--missing", action="store_true", help="only the evaluations without a record in --out (one begun resumes)"
    )
    args = parser.parse_args(argv)
    if not args.study.is_dir():
        parser.error(f"{args.study}: no such folder (a claim-2 study, e.g. results/robustness_claim2/fmnist_vgg5)")
    runs = collect_runs(args.study, lambda line: print(f"# skipped: {line}", file=sys.stderr))
    settings, _ = pool_settings([run for run in runs if run.robustness is not None])  # finished, each seed once
    if not settings:
        parser.error(f"{args.study}: no finished run with a robustness.json yet")
    chosen: list[str] = []
    for radius, keys in fronts(settings).items():
        print(f"# front at l2 {radius}: " + "; ".join(settings[k][0].setting for k in keys))
        chosen += [k for k in keys if k not in chosen]
    unweighted = 0
    for key in chosen:
        weighted = [r for r in sorted(settings[key], key=seed_of) if saved_weights(r.path) is not None]
        if not weighted:
            unweighted += 1
            folders = ", ".join(r.path.name for r in settings[key])
            print(f"# no weights of {settings[key][0].setting} here (no {CHECKPOINT} or {WEIGHTS} in {folders}): "
                  "its seeds' records, no model to evaluate")  # fmt: skip
            continue
        first = weighted[0]
        done = Path(args.out) / first.path.resolve().name / ROBUSTNESS  # where `evaluate --out` writes it
        if args.missing and done.is_file():
            print(f"# done: {done}")
        else:
            print(command(first, args.out, args.device))
    return 1 if unweighted else 0


if __name__ == "__main__":
    raise SystemExit(main())
