#!/usr/bin/env bash
# Benchmark: a no-op `pollard run` / `pollard status` on a generated 500-stage command pipeline
# (20 chains x 25 deep, every stage reading two upstream stages, five 100 MB outputs, 100
# param-reading stages), against `dvc status` / `dvc repro` on the equivalent dvc.yaml, measured
# in the same run on the same machine. Prints medians and ratios; asserts nothing.
#
# Usage: benches/engine_vs_dvc.sh [CHAINS=20] [TRIALS=5]
# Needs python3 with venv and network access to PyPI (dvc is installed into a venv here).
# Env: WORK (default /tmp/pollard-bench), POLLARD_BIN (default: target/debug/pollard, built
# with `cargo build` when missing; the dev profile is optimised, opt-level 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHAINS=${1:-20}
TRIALS=${2:-5}
WORK=${WORK:-/tmp/pollard-bench}
BIN=${POLLARD_BIN:-$ROOT/target/debug/pollard}
[ -x "$BIN" ] || cargo build --bin pollard
rm -rf "$WORK"
mkdir -p "$WORK"
python3 benches/engine_gen.py "$WORK" "$CHAINS"

. benches/timing.sh

echo "== pollard ($BIN)"
cd "$WORK/pollard"
t0=$(now); "$BIN" run --plain >/dev/null; t1=$(now)
P_FIRST=$(echo "$t1 - $t0" | bc -l)
P_RUN=$(median_of "$BIN" run --plain)
P_STATUS=$(median_of "$BIN" status)
touch inputs/big_0.txt
P_TOUCH=$(median_of "$BIN" status)
"$BIN" status | head -1

echo "== dvc (installing into $WORK/venv)"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q dvc
DVC="$WORK/venv/bin/dvc"
"$DVC" --version
cd "$WORK/dvc"
git init -q && git config user.email b@b && git config user.name b
"$DVC" init -q && "$DVC" config core.analytics false && "$DVC" config core.check_update false
# Produce every output by running the commands directly, then let dvc record them: the same
# up-to-date state as a first `dvc repro`, without its quadratic lock rewriting (11 min at N=500).
t0=$(now); bash run_all.sh; "$DVC" commit -f -q >/dev/null; t1=$(now)
D_SETUP=$(echo "$t1 - $t0" | bc -l)
git add -A >/dev/null && git commit -qm pipeline
"$DVC" status | tail -1
D_STATUS=$(median_of "$DVC" status)
D_REPRO=$(median_of "$DVC" repro)

echo
echo "stages: $((CHAINS * 25)); trials: $TRIALS (median wall seconds)"
printf '%-44s %10s\n' "pollard first run (everything runs)" "$P_FIRST"
printf '%-44s %10s\n' "dvc: run commands + dvc commit (setup)" "$D_SETUP"
printf '%-44s %10s\n' "pollard run, nothing changed" "$P_RUN"
printf '%-44s %10s\n' "pollard status, nothing changed" "$P_STATUS"
printf '%-44s %10s\n' "pollard status, a deps file touched" "$P_TOUCH"
printf '%-44s %10s\n' "dvc status, nothing changed" "$D_STATUS"
printf '%-44s %10s\n' "dvc repro, nothing changed" "$D_REPRO"
echo
printf 'dvc repro / pollard run (no-op):   %6.1fx\n' "$(echo "$D_REPRO / $P_RUN" | bc -l)"
printf 'dvc status / pollard status:       %6.1fx\n' "$(echo "$D_STATUS / $P_STATUS" | bc -l)"
