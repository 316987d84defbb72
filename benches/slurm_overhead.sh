#!/usr/bin/env bash
# Benchmark: per-stage overhead of `--executor slurm` against the local executor, in the same run
# on the same machine. A 50-stage command DAG (CHAINS x DEPTH = 5 x 10; stage s_c_j reads
# s_c_{j-1} and s_{(c+1)%5}_{j-1}, so 10 levels of 5 independent stages) runs from an empty cache,
# TRIALS times under each executor. Prints the median wall time, per stage and per level, and the
# Slurm / local ratio; asserts nothing. Needs a Slurm cluster (scripts/slurm-local.sh start).
#
# Usage: benches/slurm_overhead.sh [TRIALS=3]
# Env: WORK (default /tmp/pollard-slurm-bench), POLLARD_BIN (default target/debug/pollard).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TRIALS=${1:-3}
WORK=${WORK:-/tmp/pollard-slurm-bench}
BIN=${POLLARD_BIN:-$ROOT/target/debug/pollard}
[ -x "$BIN" ] || cargo build --bin pollard
sinfo -h -o %T >/dev/null 2>&1 || { echo "no Slurm cluster answers (scripts/slurm-local.sh start)" >&2; exit 1; }
lscpu | grep 'Model name' || true
echo "cores: $(nproc); $(sinfo -h -N -o 'slurm node %N: %c CPUs, %G')"
. benches/timing.sh
CHAINS=5 DEPTH=10 N=50
rm -rf "$WORK" && mkdir -p "$WORK"
{
  echo "pipeline: bench"
  echo "stages:"
  for j in $(seq 0 $((DEPTH - 1))); do
    for c in $(seq 0 $((CHAINS - 1))); do
      echo "  s_${c}_${j}:"
      echo "    kind: command"
      if [ "$j" -eq 0 ]; then
        echo "    cmd: echo $c > \$POLLARD_OUT/v"
      else
        n=$(((c + 1) % CHAINS))
        echo "    inputs: { a: s_${c}_$((j - 1)), b: s_${n}_$((j - 1)) }"
        echo "    cmd: cat \$POLLARD_IN_A/v \$POLLARD_IN_B/v | sort | head -3 > \$POLLARD_OUT/v; echo $j >> \$POLLARD_OUT/v"
      fi
    done
  done
} > "$WORK/pollard.yaml"
cd "$WORK"
# One trial: an empty cache and lock, then a first run.
first_run() { rm -rf .pollard pollard.lock; "$BIN" run --plain "$@"; }
LOCAL=$(median_of first_run)
SLURM=$(median_of first_run --executor slurm)
first_run --executor slurm >/dev/null 2>&1
cp pollard.lock slurm.lock; first_run >/dev/null 2>&1
cmp -s pollard.lock slurm.lock && echo "locks: identical" || echo "locks: DIFFER"
printf 'local: %7.2f s (%6.1f ms/stage)\n' "$LOCAL" "$(echo "$LOCAL * 1000 / $N" | bc -l)"
printf 'slurm: %7.2f s (%6.1f ms/stage, %6.1f ms/level of %d parallel stages)\n' "$SLURM" \
  "$(echo "$SLURM * 1000 / $N" | bc -l)" "$(echo "$SLURM * 1000 / $DEPTH" | bc -l)" "$CHAINS"
printf 'overhead: %.1f ms/stage; slurm/local: %.1fx\n' \
  "$(echo "($SLURM - $LOCAL) * 1000 / $N" | bc -l)" "$(echo "$SLURM / $LOCAL" | bc -l)"
