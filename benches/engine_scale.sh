#!/usr/bin/env bash
# Benchmark: how `pollard run` scales with the pipeline. Generates the benches/engine_gen.py
# pipeline at 500 stages (20 chains x 25) and at 5,000 (200 chains x 25), then times a first run
# (every stage runs) and two kinds of no-op run (median of TRIALS each), in the same run on the
# same machine: planned in full (the no-op memo removed before each run), and answered from the
# memo (recorded by one run once the files have settled past the 2 s racy window, as they have
# when a user reruns an unchanged pipeline). Prints the times, per-stage costs and the
# 5,000 / 500 ratios; asserts nothing.
#
# Usage: benches/engine_scale.sh [TRIALS=3]
# Env: WORK (default /tmp/pollard-scale), POLLARD_BIN (default: target/debug/pollard, built with
# `cargo build` when missing; the dev profile is optimised, opt-level 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TRIALS=${1:-3}
WORK=${WORK:-/tmp/pollard-scale}
BIN=${POLLARD_BIN:-$ROOT/target/debug/pollard}
[ -x "$BIN" ] || cargo build --bin pollard
lscpu | grep 'Model name' || true
echo "cores: $(nproc)"
. benches/timing.sh
declare -A FIRST NOOP MEMO
for CHAINS in 20 200; do
  N=$((CHAINS * 25))
  rm -rf "$WORK/$N"
  mkdir -p "$WORK/$N"
  python3 benches/engine_gen.py "$WORK/$N" "$CHAINS" >/dev/null
  cd "$WORK/$N/pollard"
  export POLLARD_CACHE_DIR="$WORK/$N/cache"
  t0=$(now); "$BIN" run --plain >/dev/null 2>&1; t1=$(now)
  FIRST[$N]=$(echo "$t1 - $t0" | bc -l)
  NOOP[$N]=$(median_of bash -c "rm -f .pollard/pollard.lock.noop; exec $BIN run --plain")
  sleep 2.2
  "$BIN" run --plain >/dev/null 2>&1
  [ -f .pollard/pollard.lock.noop ] || echo "warning: no memo recorded at $N stages"
  MEMO[$N]=$(median_of "$BIN" run --plain)
  "$BIN" status > "$WORK/$N/status.txt"; head -1 "$WORK/$N/status.txt"
  cd "$ROOT"
  printf '%5d stages: first run %8.2f s (%6.2f ms/stage), no-op run planned in full %7.1f ms, from the memo %6.1f ms\n' "$N" \
    "${FIRST[$N]}" "$(echo "${FIRST[$N]} * 1000 / $N" | bc -l)" "$(echo "${NOOP[$N]} * 1000" | bc -l)" \
    "$(echo "${MEMO[$N]} * 1000" | bc -l)"
done
printf 'first run 5000/500: %.2fx (linear: 10x); no-op 5000/500: %.2fx planned in full, %.2fx from the memo\n' \
  "$(echo "${FIRST[5000]} / ${FIRST[500]}" | bc -l)" "$(echo "${NOOP[5000]} / ${NOOP[500]}" | bc -l)" \
  "$(echo "${MEMO[5000]} / ${MEMO[500]}" | bc -l)"
