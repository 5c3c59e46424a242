#!/bin/bash
# Copy a study's finished runs (trained to their last epoch, or diverged) from the folder a sweep writes into
# the repository's results/: their records (config, metrics, provenance, robustness, certificates, published
# weights, divergence), never checkpoints; a run still training is left for a later copy. E.g.
#   scripts/sync_study.sh /work/study/results/small_data_fit results/small_data_fit
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 FROM TO (a sweep's results folder, the repository's)" >&2; exit 2; fi
if [ ! -d "$1" ]; then echo "$0: $1: no such folder (FROM is the sweep's results folder)" >&2; exit 2; fi
to=$(mkdir -p "$2" && cd "$2" && pwd) || { echo "$0: cannot create $2" >&2; exit 1; }  # absolute, either way
if [ "$(cd "$1" && pwd)" = "$to" ]; then echo "$0: FROM and TO are one folder ($to)" >&2; exit 2; fi
cd "$1"
python3 - "$to" <<'PY'
import json
import shutil
import sys
from pathlib import Path

RECORDS = ("config.json", "metrics.jsonl", "provenance.json", "robustness.json", "certified.json", "certified_val.json",
           "weights.pt", "diverged.json")
to, copied, left = Path(sys.argv[1]), 0, []
for config in sorted(Path(".").rglob("config.json")):
    run = config.parent
    if any(part.startswith(".") or ".old-" in part for part in run.parts):  # hidden, or set aside by --fresh
        continue
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    try:
        last = json.loads(lines[-1])["epoch"] if lines else -1
        finished = last == json.loads(config.read_text())["num_epochs"] - 1
    except (ValueError, KeyError, TypeError):  # not records of a finished run
        finished = False
    if not finished and not (run / "diverged.json").is_file():
        left.append(str(run))
        continue
    try:
        (to / run).mkdir(parents=True, exist_ok=True)
        for record in RECORDS:
            if (run / record).is_file():
                shutil.copy2(run / record, to / run / record)
    except OSError as error:
        sys.exit(f"sync_study.sh: {to / run}: {error.strerror}; {copied} runs copied before it")
    copied += 1
print(f"copied {copied} finished runs" + (f"; left {len(left)} unfinished: {', '.join(left)}" if left else ""))
PY
