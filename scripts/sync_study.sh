#!/bin/bash
# Copy a study's finished runs (trained to their last epoch, or diverged) from the folder a sweep writes into
# the repository's results/: their records (config, metrics, provenance, robustness, certificates, published
# weights, divergence), never checkpoints; a run still training is left for a later copy, a damaged one
# named (exit 1). A run whose evaluation is under way also brings its journal (robustness.journal/), so
# that a later session resumes it from its published weights: where the run has none, they are exported
# from a copy of its checkpoint into the copy (`kernel-reg export` in place would be refused while the
# evaluation holds the folder), and a run with neither is named. A copied journal whose evaluation has since
# finished is removed. Runs the package's Python (PYTHON, default the repository's .venv). E.g.
#   scripts/sync_study.sh /work/study/results/small_data_fit results/small_data_fit
set -euo pipefail
PYTHON=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}  # the package's reading of run folders
if [ $# -ne 2 ]; then echo "usage: $0 FROM TO (a sweep's results folder, the repository's)" >&2; exit 2; fi
if [ ! -d "$1" ]; then echo "$0: $1: no such folder (FROM is the sweep's results folder)" >&2; exit 2; fi
to=$(mkdir -p "$2" && cd "$2" && pwd) || { echo "$0: cannot create $2" >&2; exit 1; }  # absolute, either way
if [ "$(cd "$1" && pwd)" = "$to" ]; then echo "$0: FROM and TO are one folder ($to)" >&2; exit 2; fi
cd "$1"
"$PYTHON" - "$to" <<'PY'
import shutil
import sys
import tempfile
from pathlib import Path

from kernel_reg.app.journal import JOURNAL
from kernel_reg.app.rundir import (RunFolderError, export_weights, read_config, read_divergence, read_metrics,
                                  trained_to_end)
from kernel_reg.app.studies import run_folders

RECORDS = ("config.json", "metrics.jsonl", "provenance.json", "robustness.json", "certified.json", "certified_val.json",
           "weights.pt", "diverged.json")
to, copied, left, damaged, unpublished, exported = Path(sys.argv[1]), 0, [], [], [], []
for run in run_folders("."):  # the rule of `kernel-reg report`: set-aside and hidden folders are not runs
    try:
        done = trained_to_end(read_config(run), read_metrics(run)) or read_divergence(run) is not None
    except RunFolderError as error:
        damaged.append(f"{run} ({error})")
        continue
    if not done:
        left.append(str(run))
        continue
    try:
        (to / run).mkdir(parents=True, exist_ok=True)
        for record in RECORDS:
            if (run / record).is_file():
                shutil.copy2(run / record, to / run / record)
        if (run / JOURNAL).is_dir() and not (run / "robustness.json").is_file():  # an evaluation under way
            shutil.copytree(run / JOURNAL, to / run / JOURNAL, dirs_exist_ok=True)
            if not (run / "weights.pt").is_file():
                if (run / "checkpoint.pt").is_file():  # the evaluation holds the folder: export from a copy
                    with tempfile.TemporaryDirectory() as scratch:
                        for record in ("config.json", "metrics.jsonl", "checkpoint.pt"):
                            shutil.copy2(run / record, Path(scratch) / record)
                        try:
                            shutil.copy2(export_weights(scratch), to / run / "weights.pt")
                            exported.append(str(run))
                        except RunFolderError as error:  # a damaged checkpoint: its records are copied
                            damaged.append(f"{run}'s weights ({error})")
                else:
                    unpublished.append(str(run))
        elif (to / run / JOURNAL).is_dir():  # its evaluation has finished since the last copy
            shutil.rmtree(to / run / JOURNAL)
    except OSError as error:
        sys.exit(f"sync_study.sh: {to / run}: {error.strerror}; {copied} runs copied before it")
    copied += 1
print(f"copied {copied} finished runs" + (f"; left {len(left)} unfinished: {', '.join(left)}" if left else ""))
if exported:
    print("evaluations under way whose weights were exported from a copy of their checkpoint (the evaluation holds "
          f"the folder) into the copy: {', '.join(exported)}")
if unpublished:
    print("evaluations under way without published weights (their journals resume only with them; "
          f"kernel-reg export RUN, then copy again): {', '.join(unpublished)}")
if damaged:
    sys.exit("sync_study.sh: not copied, their records are damaged: " + "; ".join(damaged))
PY
