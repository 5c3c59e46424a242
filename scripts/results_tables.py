"""Regenerate the tables of RESULTS.md that quote run records, from the records alone.

    python scripts/results_tables.py            # rewrite every generated block of RESULTS.md in place
    python scripts/results_tables.py --check    # exit 1, naming each block that differs (the test suite runs this)

A generated block sits between ``<!-- generated: KIND ARGUMENT -->`` and ``<!-- end generated -->``; the text
between them is the output of ``GENERATORS[KIND](ARGUMENT)`` and nothing else, so that a number in it can
only change when the records do. Kinds:

- ``paired EXPERIMENT``: the paired table of ``kernel-reg report`` for that experiment's study under
  ``results/small_data_fit`` (paired t-intervals, Holm-adjusted verdicts), without the augmentation runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from kernel_reg.app.report import paired_table
from kernel_reg.app.studies import collect_runs, studies

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def paired(experiment: str) -> str:
    """The paired table of the small-data study of ``experiment`` (the study without augmentation)."""
    found = [s for s in studies(collect_runs(ROOT / "results" / "small_data_fit"))
             if s.experiment == experiment and not s.differs.get("aug")]  # fmt: skip
    if len(found) != 1:
        raise SystemExit(f"results/small_data_fit holds {len(found)} studies of {experiment} without augmentation")
    return paired_table(found[0].runs)


GENERATORS: dict[str, Callable[[str], str]] = {"paired": paired}


def regenerate(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten, and the names of the blocks whose content changed."""
    changed: list[str] = []

    def rewrite(match: re.Match[str]) -> str:
        kind, argument = match.group(2), match.group(3)
        if kind not in GENERATORS:
            raise SystemExit(f"RESULTS.md: unknown generated block '{kind}' (known: {', '.join(GENERATORS)})")
        fresh = GENERATORS[kind](argument).rstrip("\n") + "\n"
        if fresh != match.group(4):
            changed.append(f"{kind} {argument}")
        return match.group(1) + fresh + match.group(5)

    return BLOCK.sub(rewrite, text), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    args = parser.parse_args()
    text = args.results.read_text()
    fresh, changed = regenerate(text)
    if args.check:
        if changed:
            print(f"{args.results.name}: regenerated from the records, these blocks differ: {'; '.join(changed)}. "
                  "Run python scripts/results_tables.py", file=sys.stderr)  # fmt: skip
            raise SystemExit(1)
        return
    if changed:
        temporary = args.results.with_name(args.results.name + ".tmp")
        temporary.write_text(fresh)
        temporary.replace(args.results)
    print(f"{args.results.name}: {len(changed)} block(s) rewritten" + (f": {'; '.join(changed)}" if changed else ""))


if __name__ == "__main__":
    main()
