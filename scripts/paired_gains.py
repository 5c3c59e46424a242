"""The headline figure of the small-data study: per method, its paired gain over the unregularized baseline
with a 95% t-interval, at 1000 and 300 examples side by side (Holm-adjusted verdicts per size).

    python scripts/paired_gains.py [results/small_data_fit] [--out results/small_data_fit/paired_gains.png]

Reads the run records (config.json, metrics.jsonl) only; the runs of each size are one study of
``kernel-reg report``, whose paired table gives the same numbers.
"""

import argparse
from pathlib import Path

from kernel_reg.app.plots import plot_paired_gains
from kernel_reg.app.report import paired_comparisons
from kernel_reg.app.statistics import family
from kernel_reg.app.studies import collect_runs, main_study, studies, unaugmented_by_epochs
from kernel_reg.progress import say

SIZES = {"fmnist1000_vgg5": "1000 examples", "fmnist300_vgg5": "300 examples"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path("results/small_data_fit"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: no such folder (the small-data study's results folder)")
    found = studies(collect_runs(args.root))
    panels = {}
    for experiment, size in SIZES.items():
        try:  # the main study: without augmentation (a control of its own), of fewest epochs
            main_of_size = main_study(unaugmented_by_epochs(found, experiment))
        except ValueError as error:
            raise SystemExit(f"{args.root} holds {error}") from None
        if main_of_size is not None:
            rows = paired_comparisons(main_of_size.runs)
            tested = family({f"{ref}:{m}": d for ref, m, _, d in rows})  # the report's family: Holm over both tables
            panels[size] = {k.split(":", 1)[1]: c for k, c in tested.items() if k.startswith("baseline:")}
    out = args.out or args.root / "paired_gains.png"
    if not plot_paired_gains(panels, out):
        raise SystemExit(f"{args.root}: no study of {' or '.join(SIZES)} has a comparison with 2 paired subsets")
    say(f"wrote {out}")
    for size, tested in panels.items():
        for method, c in sorted(tested.items()):
            say(f"  {size}: {method}: {c.mean:+.2f} [{c.low:+.2f}, {c.high:+.2f}], n={c.n}, Holm p={c.p_holm:.3g}")


if __name__ == "__main__":
    main()
