#!/bin/bash
# Copy a study's run records (config, metrics, provenance, robustness, certificates, published weights, divergence;
# never checkpoints) from the
# folder a sweep writes into the repository's results/, e.g.
#   scripts/sync_study.sh /work/study/results/small_data_fit results/small_data_fit
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 FROM TO (a sweep's results folder, the repository's)" >&2; exit 2; fi
to=$(mkdir -p "$2" && cd "$2" && pwd)  # absolute: relative to where the script was called, either way
cd "$1"
find . -name config.json -not -path '*/.*' | while read -r config; do
  run=$(dirname "$config")
  mkdir -p "$to/$run"
  for record in config.json metrics.jsonl provenance.json robustness.json certified.json weights.pt diverged.json; do
    if [ -f "$run/$record" ]; then cp "$run/$record" "$to/$run/$record"; fi
  done
done
