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
from kernel_reg.app.studies import collect_runs, studies
from kernel_reg.progress import say

SIZES = {"fmnist1000_vgg5": "1000 examples", "fmnist300_vgg5": "300 examples"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path("results/small_data_fit"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    panels = {}
    for study in studies(collect_runs(args.root)):
        if study.experiment not in SIZES or study.differs.get("aug"):
            continue  # the augmentation control is a study of its own
        rows = paired_comparisons(study.runs)
        tested = family({f"{ref}:{m}": d for ref, m, _, d in rows})  # the report's family: Holm over both tables
        panels[SIZES[study.experiment]] = {
            k.split(":", 1)[1]: c for k, c in tested.items() if k.startswith("baseline:")
        }
    out = args.out or args.root / "paired_gains.png"
    ordered = {size: panels[size] for size in SIZES.values() if size in panels}
    if plot_paired_gains(ordered, out):
        say(f"wrote {out}")
        for size, tested in ordered.items():
            for method, c in sorted(tested.items()):
                print(
                    f"  {size}: {method}: {c.mean:+.2f} [{c.low:+.2f}, {c.high:+.2f}], n={c.n}, Holm p={c.p_holm:.3g}"
                )


if __name__ == "__main__":
    main()
