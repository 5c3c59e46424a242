#!/bin/bash
# Issue 29, item 5: the certified recipe chosen on a validation split, then reported with 3 seeds. Each
# stage fits one 10-minute call on one GPU (runs share it; an H100 took 10-15 s an epoch with five sharing
# it) and is resumable (a finished run is skipped; an interrupted kernel-reg run resumes from its checkpoint,
# an interrupted deel-torchlip run, which keeps no checkpoint, starts again):
#   scripts/certified_study.sh select     # 5 candidates, 5,000 validation examples carved from the 60,000
#   python scripts/certified_selection.py select runs/certified_select/fmnist_vgg5/*   # the rule, the choice
#   scripts/certified_study.sh final NAME # the chosen candidate and deel-torchlip's layers, 3 seeds each
#   scripts/certified_study.sh evaluate   # attacked and certified on all 10,000 test images, the same ones
#   python scripts/certified_selection.py final runs/certified_final/fmnist_vgg5/* --reference NAME
# The choice is made on the validation examples alone; the test set is read once, by the last two steps.
# ROOT (default runs) holds the run folders and the logs: scripts/gpu_session.sh sets it to a folder it commits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs}
KR=${KR:-kernel-reg}
PY=${PY:-python}
EPOCHS=${EPOCHS:-30}
# flags appended to every kernel-reg training and to deel-torchlip's (a smoke test on a CPU: EPOCHS=1
# EXTRA="--n-train 256 --n-val 128 --width 4 --data-dir embedded" DEEL_EXTRA="--n-train 256 --width 4 ...")
EXTRA=${EXTRA:-}
DEEL_EXTRA=${DEEL_EXTRA:-}
RECIPE="--experiment fmnist_vgg5 --model lipnet --normalization orthogonal --optimizer adam --lr 0.001 \
  --ce-scale 10 --batch-size 512 --num-epochs $EPOCHS --sched-step 10 --eval-delta 10 --probe-delta 1000 --n-val 5000"
VAL=$(sed 's/.*--n-val \([0-9]*\).*/\1/' <<< "$RECIPE $EXTRA")
# the candidates: NAME and the flags that make it (margin and width: the two knobs of the published table)
declare -A CANDIDATES=(
  [w32_m0.7]="--width 32 --lipschitz-margin 0.7"
  [w32_m1.0]="--width 32 --lipschitz-margin 1.0"
  [w32_m1.3]="--width 32 --lipschitz-margin 1.3"
  [w64_m0.7]="--width 64 --lipschitz-margin 0.7"
  [w64_m1.0]="--width 64 --lipschitz-margin 1.0"
)
mkdir -p "$ROOT"
pids=()
wait_all() {  # every background training, failing when one did (its log names the error)
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if [ $failed -ne 0 ]; then echo "a training failed: see $ROOT/*.log" >&2; exit 1; fi
}

case "${1:-}" in
  select)
    for name in "${!CANDIDATES[@]}"; do  # kernel-reg train resumes a run folder (a finished one at once)
      # shellcheck disable=SC2086
      $KR train $RECIPE ${CANDIDATES[$name]} $EXTRA --root "$ROOT/certified_select" --name "$name" > "$ROOT/select_$name.log" 2>&1 &
      pids+=($!)
    done
    wait_all
    $KR certify "$ROOT"/certified_select/fmnist_vgg5/* --split val --weights last --eps 0.1 0.25 0.5
    ;;
  final)
    name=${2:?"usage: $0 final CANDIDATE (one of: ${!CANDIDATES[*]})"}
    flags=${CANDIDATES[$name]:?"unknown candidate $name; one of: ${!CANDIDATES[*]}"}
    margin=$(sed 's/.*--lipschitz-margin \([0-9.]*\).*/\1/' <<< "$flags")
    width=$(sed 's/.*--width \([0-9]*\).*/\1/' <<< "$flags")
    for s in 0 1 2; do  # each seed its own initialisation and its own validation examples
      $KR train $RECIPE $flags $EXTRA --root "$ROOT/certified_final" --name "${name}_s$s" \
        --seed $((42 + s)) --shuf-seed $s > "$ROOT/final_${name}_s$s.log" 2>&1 &
      pids+=($!)
      run=$ROOT/certified_final/fmnist_vgg5/torchlip_${name}_s$s
      [ -f "$run/weights.pt" ] || $PY scripts/torchlip_baseline.py --root "$ROOT/certified_final" \
        --name "torchlip_${name}_s$s" --width "$width" --lipschitz-margin "$margin" --optimizer adam --lr 0.001 \
        --ce-scale 10 --batch-size 512 --num-epochs $EPOCHS --sched-step 10 --n-val "$VAL" --seed $((42 + s)) \
        --shuf-seed $s $DEEL_EXTRA > "$ROOT/final_torchlip_${name}_s$s.log" 2>&1 &
      pids+=($!)
    done
    wait_all
    ;;
  evaluate)
    # --in-place: deel-torchlip's folders hold only weights.pt, which marks a published folder
    shopt -s nullglob
    finals=("$ROOT"/certified_final/fmnist_vgg5/*/)
    if [ ${#finals[@]} -eq 0 ]; then echo "$0 evaluate: no run under $ROOT/certified_final/fmnist_vgg5: run final first" >&2; exit 2; fi
    for run in "${finals[@]}"; do
      [ -f "$run/certified.json" ] || $KR certify "$run" --weights last --eps 0.1 0.25 0.5 --in-place
      [ -f "$run/robustness.json" ] || $KR evaluate "$run" --weights last --eps-l2 0.1 0.25 0.5 --eps-linf \
        --attacks strong --eval-n-test 0 --lipschitz-probe 256 --in-place
    done
    ;;
  *)
    echo "usage: $0 select | final CANDIDATE | evaluate" >&2
    exit 2
    ;;
esac
