#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (H100/H200 class) and driver r580+ (PTX from
# nvcc 13.4): builds the CUDA variant (scripts/cuda-build.sh), runs every CUDA test (the
# `*_cuda` tests), runs the tiny recipe with its model stages on GPU 0, and runs
# benches/model_speed on CUDA against PyTorch on CUDA with the same model; prints a table.
#
# Needs no network when the toolkit is already there (CUDA_HOME, or the wheel venv under
# ~/.cache/pollard from an earlier cuda-build.sh run) and the crates are vendored or fetched.
# PyTorch: POLLARD_TORCH_PYTHON (a python with a CUDA torch); without it the bench row says so.
# Each step has a timeout (seconds): POLLARD_CHECK_BUILD_TIMEOUT (2400), ..._TEST_TIMEOUT (900),
# ..._RECIPE_TIMEOUT (900), ..._BENCH_TIMEOUT (600). A failing step is reported and the next
# one still runs; the exit status is 1 if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log_dir=${POLLARD_CHECK_LOGS:-$root/target/gpu-check}
mkdir -p "$log_dir"
say() { echo "gpu-check: $*" >&2; }

command -v nvidia-smi >/dev/null \
    || { say "error: nvidia-smi not found: this script needs a machine with an NVIDIA GPU and driver"; exit 2; }
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | head -n1) \
    || { say "error: nvidia-smi cannot query a GPU"; exit 2; }
say "GPU 0: $gpu"

declare -a rows=()
failed=0
# step NAME TIMEOUT CMD...: runs CMD with a timeout, logs to $log_dir/NAME.log, records a row.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS status
    say "$name: $* (timeout ${limit}s, log $log_dir/$name.log)"
    if timeout "$limit" "$@" >"$log_dir/$name.log" 2>&1; then
        status=ok
    else
        local rc=$?
        status="FAILED (exit $rc$([[ $rc == 124 ]] && echo ", timed out"))"
        failed=1
        tail -n 20 "$log_dir/$name.log" >&2 || true
    fi
    rows+=("$(printf '%-10s %-34s %6ss' "$name" "$status" "$((SECONDS - t0))")")
}

step build "${POLLARD_CHECK_BUILD_TIMEOUT:-2400}" scripts/cuda-build.sh
if [[ ! -f target/cuda-env.sh ]]; then
    say "error: the build wrote no target/cuda-env.sh; see $log_dir/build.log"
    exit 1
fi
# The build's environment (so cargo reuses what it built), then what running needs.
# shellcheck disable=SC1091
. target/cuda-build-env.sh
# shellcheck disable=SC1091
. target/cuda-env.sh
bin=$POLLARD_CUDA_BIN

step version 60 "$bin" --version
# Every CUDA test: cargo runs the already built release test binaries, filtered to `cuda`.
step tests "${POLLARD_CHECK_TEST_TIMEOUT:-900}" \
    cargo test --release --locked --workspace --features cuda -- cuda --include-ignored
cuda_tests=$(grep -c '^test .*cuda.* ok$' "$log_dir/tests.log" || true)

# The tiny recipe on GPU 0: a copy with `resources: { gpus: 1 }` on every model stage.
work=$(mktemp -d "${TMPDIR:-/tmp}/pollard-gpu-check.XXXXXX")
python3 - "$root/pipelines/tiny.yaml" "$work/pollard.yaml" <<'EOF'
import re, sys
src, dst = sys.argv[1], sys.argv[2]
out = []
for line in open(src):
    out.append(line)
    m = re.match(r"^(\s+)kind: (train|score|distill|evaluate)\s*$", line)
    if m:
        out.append(f"{m.group(1)}resources: {{ gpus: 1 }}\n")
open(dst, "w").write("".join(out))
EOF
step recipe "${POLLARD_CHECK_RECIPE_TIMEOUT:-900}" \
    bash -c "cd '$work' && '$bin' run && '$bin' status"

step bench "${POLLARD_CHECK_BENCH_TIMEOUT:-600}" \
    env POLLARD_BENCH_DEVICE=cuda cargo bench --locked --features cuda --bench model_speed

echo
echo "pollard GPU check on: $gpu"
echo "$("$bin" --version 2>/dev/null || echo 'pollard: binary missing')"
printf '%-10s %-34s %7s\n' step status time
for r in "${rows[@]}"; do echo "$r"; done
echo "CUDA tests passed: $cuda_tests"
grep -E '^(train step|forward \(frozen\)|PyTorch:|pollard/PyTorch)' "$log_dir/bench.log" 2>/dev/null || true
echo "logs: $log_dir; recipe workspace: $work"
exit "$failed"
