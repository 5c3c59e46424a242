#!/bin/bash
# Copy a study's run records (config, metrics, robustness, published weights, divergence; never checkpoints) from the
# folder a sweep writes into the repository's results/, e.g.
#   scripts/sync_study.sh /work/study/results/small_data_fit results/small_data_fit
set -euo pipefail
from=$1 to=$2
cd "$from"
find . -name config.json -not -path '*/.*' | while read -r config; do
  run=$(dirname "$config")
  mkdir -p "$OLDPWD/$to/$run"
  for record in config.json metrics.jsonl robustness.json weights.pt diverged.json; do
    if [ -f "$run/$record" ]; then cp "$run/$record" "$OLDPWD/$to/$run/$record"; fi
  done
done
