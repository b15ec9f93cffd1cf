#!/usr/bin/env bash
# Regenerate a dataset's reports (reports/<dataset>/base.md, adaptation-<model>.md; index: reports/README.md):
# base models + popularity, then every adaptation method, for each dataset given (default ml-100k),
# 3 seeds, SASRec and GRU4Rec; then the all-datasets summary (reports/adaptation_summary.md).
#   scripts/reproduce.sh [DATASET ...]
# Env: DEVICE=cpu|cuda|auto (default auto), MODELS="sasrec gru4rec", PERSONA="persona" (command),
#      PYTHON="python" (for scripts/adaptation_summary.py),
#      EXTRA="key=value ..." (more overrides for every step).
set -euo pipefail
DEVICE=${DEVICE:-auto}
MODELS=${MODELS:-sasrec gru4rec}
PERSONA=${PERSONA:-persona}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python}
[ $# -gt 0 ] || set -- ml-100k
for d in "$@"; do
  for m in $MODELS; do
    $PERSONA train --quiet "dataset=$d" "model=$m" "device=$DEVICE" $EXTRA
  done
  $PERSONA evaluate "dataset=$d" --models "pop,${MODELS// /,}" $EXTRA
  [ -f "runs/$d/codebook/meta.json" ] || $PERSONA codebook "dataset=$d" $EXTRA
  for m in $MODELS; do
    $PERSONA evaluate --quiet --methods all "dataset=$d" "model=$m" "device=$DEVICE" $EXTRA
  done
done
"$PYTHON" "$(dirname "$0")/adaptation_summary.py" >/dev/null
