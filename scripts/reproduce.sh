#!/usr/bin/env bash
# Regenerate the README's result tables: base models + popularity, then every adaptation method,
# for each dataset given (default ml-100k), 3 seeds, SASRec and GRU4Rec.
#   scripts/reproduce.sh [DATASET ...]
# Env: DEVICE=cpu|cuda|auto (default auto), MODELS="sasrec gru4rec", PERSONA="persona" (command),
#      EXTRA="key=value ..." (more overrides for every step).
set -euo pipefail
DEVICE=${DEVICE:-auto}
MODELS=${MODELS:-sasrec gru4rec}
PERSONA=${PERSONA:-persona}
EXTRA=${EXTRA:-}
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
