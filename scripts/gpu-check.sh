#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (H100/H200 class) and a driver for CUDA 13.0
# or newer: runs every CUDA test (the `*_cuda` tests), the model_speed bench on CUDA against
# PyTorch on CUDA with the same model, and the tiny recipe with its model stages on GPU 0;
# prints a table.
#
# Two ways to get the binaries:
# - `scripts/gpu-check.sh`: builds them here (scripts/cuda-build.sh; needs cargo and either
#   CUDA_HOME or PyPI for the toolkit wheels).
# - `scripts/gpu-check.sh --bundle FILE`: unpacks what scripts/gpu-bundle.sh packed on another
#   machine (the default when cargo is missing and target/gpu-bundle/pollard-cuda.tar.xz
#   exists). Needs only python3, the driver and CUDA's libraries (libcudart, libcublas,
#   libcurand, version 13): found in CUDA_HOME, /usr/local/cuda, or the nvidia wheels of the
#   python3 that has PyTorch. Nothing is fetched.
#
# PyTorch: POLLARD_TORCH_PYTHON (a python with a CUDA torch; default python3); without torch the
# bench row says so. Each step has a timeout (seconds): POLLARD_CHECK_BUILD_TIMEOUT (2400),
# ..._TEST_TIMEOUT (150), ..._BENCH_TIMEOUT (180), ..._RECIPE_TIMEOUT (200): about 9 minutes at
# most after the build, so one run fits a short GPU lease. A failing step is reported and the
# next one still runs; the exit status is 1 if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log_dir=${POLLARD_CHECK_LOGS:-$root/target/gpu-check}
say() { echo "gpu-check: $*" >&2; }
die() { say "error: $*"; exit 2; }

bundle=
if [[ ${1:-} == --bundle ]]; then
    bundle=${2:?"--bundle needs a file (from scripts/gpu-bundle.sh)"}
elif [[ $# -gt 0 ]]; then
    die "unknown argument '$1' (usage: scripts/gpu-check.sh [--bundle FILE])"
elif ! command -v cargo >/dev/null && [[ -f target/gpu-bundle/pollard-cuda.tar.xz ]]; then
    bundle=target/gpu-bundle/pollard-cuda.tar.xz
fi
mkdir -p "$log_dir"

command -v nvidia-smi >/dev/null \
    || die "nvidia-smi not found: this script needs a machine with an NVIDIA GPU and driver"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | head -n1) \
    || die "nvidia-smi cannot query a GPU"
driver_cuda=$( (nvidia-smi || true) | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)
say "GPU 0: $gpu; the driver supports CUDA ${driver_cuda:-?}"

declare -a rows=()
failed=0
# row NAME STATUS SINCE: one line of the closing table (SINCE: $SECONDS when the step began).
row() { rows+=("$(printf '%-10s %-34s %6ss' "$1" "$2" "$((SECONDS - $3))")"); }
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
        status="FAILED (exit $rc)"
        if [[ $rc == 124 ]]; then status="FAILED (exit 124, timed out)"; fi
        failed=1
        tail -n 20 "$log_dir/$name.log" >&2 || true
    fi
    row "$name" "$status" "$t0"
}

# CUDA's libraries for a bundle: the first folder of each candidate that holds libcublas.so.13.
cuda_library_path() {
    local dirs=() d
    for d in ${CUDA_HOME:+"$CUDA_HOME/lib64" "$CUDA_HOME/lib"} /usr/local/cuda/lib64 \
        /usr/local/cuda/targets/x86_64-linux/lib; do
        [[ -d $d ]] && dirs+=("$d")
    done
    local py=${POLLARD_TORCH_PYTHON:-python3}
    if command -v "$py" >/dev/null; then
        # The nvidia-* wheels PyTorch depends on: nvidia/cu13/lib, or one lib folder per wheel.
        while IFS= read -r d; do dirs+=("$d"); done < <("$py" -c '
import glob, os, sysconfig
for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
        print(d)' 2>/dev/null || true)
    fi
    # The driver's own folder, where the machine mounts it outside the loader's cache.
    for d in /usr/local/nvidia/lib64 /usr/lib/wsl/lib; do
        [[ -e $d/libcuda.so.1 ]] && dirs+=("$d")
    done
    local IFS=:
    echo "${dirs[*]}"
}

t0=$SECONDS
if [[ -n $bundle ]]; then
    [[ -f $bundle ]] || die "no bundle at $bundle (make one with scripts/gpu-bundle.sh)"
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$bundle" "$root" || die "cannot unpack $bundle"
    manifest=$root/target/gpu-bundle/bundle.txt
    [[ -f $manifest ]] || die "$bundle holds no target/gpu-bundle/bundle.txt"
    build_root=$(sed -n 's/^build_root=//p' "$manifest")
    # The binaries look for fixtures and scripts at the paths they were compiled with.
    if [[ $build_root != "$root" && ! -e $build_root ]]; then
        mkdir -p "$(dirname "$build_root")" && ln -s "$root" "$build_root" \
            || die "cannot link $build_root to $root (the binaries' compiled-in paths)"
    fi
    libs=$(cuda_library_path)
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    bin=$root/$(sed -n 's/^binary=//p' "$manifest")
    missing=$(ldd "$bin" | grep 'not found' || true)
    [[ -z $missing ]] || die "CUDA's libraries are missing (searched: $libs):
$missing
set CUDA_HOME to a CUDA 13 toolkit, or POLLARD_TORCH_PYTHON to a python whose torch ships them"
    row unpack ok "$t0"
    say "bundle: $(sed -n 's/^version=//p' "$manifest"), commit $(sed -n 's/^commit=//p' "$manifest"), PTX ISA $(sed -n 's/^ptx_isa=//p' "$manifest")"
else
    step build "${POLLARD_CHECK_BUILD_TIMEOUT:-2400}" scripts/gpu-bundle.sh
    manifest=$root/target/gpu-bundle/bundle.txt
    [[ -f $manifest ]] || die "the build wrote no $manifest; see $log_dir/build.log"
    # shellcheck disable=SC1091
    . target/cuda-env.sh
    bin=$POLLARD_CUDA_BIN
fi

step version 60 "$bin" --version

# Every CUDA test: each test binary that has some, from its package's folder as cargo runs it.
run_cuda_tests() {
    local pkg path rc=0
    while read -r pkg path; do
        echo "== $path (in $pkg)"
        # insta finds snapshots from the workspace root, which it asks cargo for unless told.
        (cd "$root/$pkg" && CARGO_MANIFEST_DIR=$root/$pkg INSTA_WORKSPACE_ROOT=$root \
            "$root/$path" cuda --include-ignored) || rc=1
    done < <(sed -n 's/^test=//p' "$manifest")
    return $rc
}
export -f run_cuda_tests
export root manifest
step tests "${POLLARD_CHECK_TEST_TIMEOUT:-150}" bash -c run_cuda_tests
cuda_tests=$(grep -c '^test .*cuda.* \.\.\. ok$' "$log_dir/tests.log" || true)
bundled_tests=$(sed -n 's/^cuda_tests=//p' "$manifest")

read -r bench_pkg bench_bin < <(sed -n 's/^bench=//p' "$manifest")
step bench "${POLLARD_CHECK_BENCH_TIMEOUT:-180}" \
    env -C "$root/$bench_pkg" POLLARD_BENCH_DEVICE=cuda \
    POLLARD_TORCH_PYTHON="${POLLARD_TORCH_PYTHON:-python3}" "$root/$bench_bin"

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
step recipe "${POLLARD_CHECK_RECIPE_TIMEOUT:-200}" \
    bash -c "cd '$work' && '$bin' run --plain && '$bin' status"

echo
echo "pollard GPU check on: $gpu (driver for CUDA ${driver_cuda:-?})"
"$bin" --version 2>/dev/null || echo 'pollard: binary missing'
printf '%-10s %-34s %7s\n' step status time
for r in "${rows[@]}"; do echo "$r"; done
echo "CUDA tests passed: $cuda_tests of ${bundled_tests:-?}"
grep -E '^(train step|forward \(frozen\)|PyTorch:|pollard/PyTorch)' "$log_dir/bench.log" 2>/dev/null || true
grep -E 'ran|failed' "$log_dir/recipe.log" 2>/dev/null | tail -n 3 || true
echo "logs: $log_dir; recipe workspace: $work"
exit "$failed"
