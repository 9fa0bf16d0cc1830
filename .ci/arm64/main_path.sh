#!/usr/bin/env bash
# The main path, run the same way on x86 (reference) and inside the arm64 root (issue #19):
#   main_path.sh MODE SHARED OUT      MODE = arm64 (everything) | x86 (the infers + the gate)
# `edged` and `python` come from PATH (the root's /opt/venv, or the host's .venv). Each step's
# exit code goes to OUT/steps.tsv; the script exits non-zero when any step failed.
set -uo pipefail
MODE=$1 SHARED=$2 OUT=$3
INPUTS=$(dirname "$OUT")/inputs  # made on the host by job.sh: the same bytes for every run
mkdir -p "$OUT"
: >"$OUT/steps.tsv"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A fresh state and cache per run: no measured int8 gate, so every run loads the fp32 files.
export EDGED_STATE_DIR=$WORK/state EDGED_CACHE_DIR=$WORK/cache EDGED_RUNTIME_DIR=$WORK/run
export EDGED_MODEL_DIRS="[\"$SHARED/models\"]"
FAILED=0

step() {  # step NAME CMD...: run, time, record
    local name=$1 t0 rc=0
    shift
    t0=$(date +%s.%N)
    "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >>"$OUT/steps.tsv"
    printf '  %-28s rc=%s %6ss\n' "$name" "$rc" "$secs"
    [ "$rc" = 0 ] || { FAILED=1; tail -5 "$OUT/$name.log" | sed 's/^/    | /'; }
}

if [ "$MODE" = arm64 ]; then
    for kind in raspberry-pi-4 raspberry-pi-5; do
        python -c "import sys; from pathlib import Path; from edged.testing import make_board; make_board(Path(sys.argv[1]), sys.argv[2])" \
            "$WORK/$kind" "$kind"
        step "profile-$kind" sh -c "edged profile --json --sysroot '$WORK/$kind' >'$OUT/profile-$kind.json'"
    done
    step profile-live sh -c "edged profile --json >'$OUT/profile-live.json'"
fi

for name in astronaut zidane; do
    img=$(ls "$SHARED/images/portraits/$name".*)
    step "seg-$name" edged infer segmentation --model selfie_segmentation --backend litert:xnnpack \
        --input "$img" --output "$OUT/seg-$name.png"
done
for name in baby butterfly; do
    step "sr-$name" edged infer superres --model edged_sr_x2 --backend onnx:cpu \
        --input "$INPUTS/lr-$name.png" --output "$OUT/sr-$name.png"
done
pair=$SHARED/images/inpaint/places2_512_object
first=$(ls "$pair/images" | head -1)
step inpaint edged infer inpainting --model opencv_telea \
    --input "$pair/images/$first" --mask "$pair/masks/$(ls "$pair/masks" | head -1)" --output "$OUT/inpaint.png"
# From a writable copy: onnxruntime's quantizer writes SRC-inferred.onnx beside the source,
# which fails in the read-only /shared (a read-only model dir on a board would fail alike).
mkdir -p "$WORK/models" && cp "$SHARED/models/espcn_x2.onnx" "$WORK/models/"
step quantize-gate env EDGED_MODEL_DIRS="[\"$WORK/models\", \"$SHARED/models\"]" sh -c \
    "edged models quantize espcn_x2 --calibration '$SHARED/images/set5/HR' \
    --out '$WORK/q/espcn_x2_int8.onnx' >'$OUT/quantize-espcn_x2.json'"
if [ "$MODE" = arm64 ]; then
    step demo edged demo --output "$OUT/demo"
fi
exit "$FAILED"
