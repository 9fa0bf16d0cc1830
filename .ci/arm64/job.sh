#!/usr/bin/env bash
# `make test-arm64` (issue #19): the project on aarch64 under qemu-user, through run.sh.
#  1. x86 reference: the main path's infers + int8 gate with the host's .venv (main_path.sh x86);
#  2. per core (cortex-a72 = Raspberry Pi 4, cortex-a76 = Pi 5): profile on the Pi 4/5 fixture
#     trees and on the emulated machine, the infers, the int8 gate and `edged demo`;
#  3. the equality figures (compare.py): a table here, OUT/equality.json;
#  4. the tests marked arm64 on cortex-a76.
# Exits non-zero when any part fails. OUT: $EDGED_ARM64_OUT (default /tmp/edged-arm64-job).
#   EDGED_ARM64_CORES  cores for parts 2-3 (default "cortex-a72 cortex-a76")
#   EDGED_ARM64_TESTS  0 skips part 4
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${VENV:-$REPO/.venv}
SHARED=$(cd "${EDGED_SHARED_DIR:-$REPO/../shared}" && pwd) || { echo "job.sh: no shared dir (set EDGED_SHARED_DIR)" >&2; exit 2; }
export EDGED_SHARED_DIR=$SHARED
OUT=${EDGED_ARM64_OUT:-/tmp/edged-arm64-job}
export EDGED_ARM64_OUT=$OUT
CORES=${EDGED_ARM64_CORES:-cortex-a72 cortex-a76}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -E"
RUN="$SUDO $HERE/run.sh"
T0=$(date +%s)
RESULTS=()
part() {  # part NAME CMD...
    local name=$1 t0 rc=0
    shift
    echo "== arm64 job: $name"
    t0=$(date +%s)
    "$@" || rc=$?
    RESULTS+=("$(printf '%-34s rc=%s %5ss' "$name" "$rc" $(($(date +%s) - t0)))")
    return "$rc"
}

rm -rf "${OUT:?}/x86" "$OUT"/cortex-* "$OUT/inputs" "$OUT/equality.json"
mkdir -p "$OUT/inputs"
# SR inputs: Set5 HR downscaled x2 with the model's training degradation (cv2.INTER_CUBIC),
# made once here so every run reads the same bytes.
"$VENV/bin/python" - "$SHARED" "$OUT/inputs" <<'EOF' || exit 1
import sys, cv2
for name in ("baby", "butterfly"):
    hr = cv2.imread(f"{sys.argv[1]}/images/set5/HR/{name}.png")
    h, w = hr.shape[:2]
    cv2.imwrite(f"{sys.argv[2]}/lr-{name}.png", cv2.resize(hr, (w // 2, h // 2), interpolation=cv2.INTER_CUBIC))
EOF

FAILED=0
part "x86 reference" env PATH="$VENV/bin:$PATH" bash "$HERE/main_path.sh" x86 "$SHARED" "$OUT/x86" || FAILED=1
INSTALL=""
for core in $CORES; do
    # The first run installs the working tree into the root; the others reuse that install.
    part "arm64 $core main path" $RUN --cpu "$core" --board pi $INSTALL -- \
        bash .ci/arm64/main_path.sh arm64 /shared "/out/$core" || FAILED=1
    INSTALL=--no-install
done
# shellcheck disable=SC2086
part "equality figures" "$VENV/bin/python" "$HERE/compare.py" "$OUT" "$SHARED" $CORES || FAILED=1
if [ "${EDGED_ARM64_TESTS:-1}" != 0 ]; then
    # Waits in the tests are bounds scaled by EDGED_TEST_SLOWDOWN (edged.testing.daemon).
    part "arm64 cortex-a76 pytest -m arm64" env EDGED_TEST_SLOWDOWN=10 $RUN --cpu cortex-a76 --board pi \
        $INSTALL -- pytest -m arm64 -p no:cacheprovider -q --durations=10 tests || FAILED=1
fi
echo "== arm64 job summary ($(($(date +%s) - T0)) s)"
printf '  %s\n' "${RESULTS[@]}"
exit "$FAILED"
