#!/usr/bin/env bash
# Packs the CUDA build for a GPU machine that has a driver and CUDA's libraries but no Rust, no
# network and little room to carry files (a lent H100/H200 with a 64 MiB transfer, say):
# scripts/cuda-build.sh, then the model_speed bench, then one .tar.xz holding the release
# binary, the test binaries that contain CUDA tests and the bench binary, debug info stripped,
# each at its path under the repository. scripts/gpu-check.sh --bundle FILE runs them there.
#
# The binaries keep the paths cargo compiled into them (fixtures, benches/model_speed_torch.py,
# CARGO_MANIFEST_DIR), so the bundle records the repository root it was built in; gpu-check.sh
# links that path to the checkout it runs in when it does not exist there.
#
# Usage: scripts/gpu-bundle.sh [OUT.tar.xz]   (default target/gpu-bundle/pollard-cuda.tar.xz)
# POLLARD_BUNDLE_MAX_MIB (default 48) refuses a bundle larger than that.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-$root/target/gpu-bundle/pollard-cuda.tar.xz}
max_mib=${POLLARD_BUNDLE_MAX_MIB:-48}
say() { echo "gpu-bundle: $*" >&2; }
die() { say "error: $*"; exit 1; }
command -v python3 >/dev/null || die "python3 not found: it reads cargo's build messages"
command -v strip >/dev/null || die "strip not found (binutils): it drops the debug info"

bash scripts/cuda-build.sh
# shellcheck disable=SC1091
. target/cuda-build-env.sh
# shellcheck disable=SC1091
. target/cuda-env.sh

# Every executable cargo built, as "kind<TAB>package dir<TAB>path", from its JSON messages.
executables() {
    python3 -c '
import json, os, sys
root = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        pkg = os.path.relpath(os.path.dirname(m["manifest_path"]), root)
        kind = "bench" if "bench" in m["target"]["kind"] else "test" if m["profile"]["test"] else "bin"
        print(kind, pkg, os.path.relpath(m["executable"], root), sep="\t")
' "$root"
}
built=$(
    {
        cargo build --release --locked --features cuda --bench model_speed --message-format=json
        cargo test --release --locked --workspace --features cuda --no-run --message-format=json
    } | executables
)

stage=$(mktemp -d "${TMPDIR:-/tmp}/pollard-bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
manifest=$stage/target/gpu-bundle/bundle.txt
mkdir -p "$(dirname "$manifest")"
add() { # add PATH: a stripped copy at the same path under the stage
    mkdir -p "$stage/$(dirname "$1")"
    strip --strip-debug -o "$stage/$1" "$1"
}
bin=$(realpath --relative-to="$root" "$POLLARD_CUDA_BIN")
add "$bin"
ptx=$(find "$CARGO_TARGET_DIR/release/build" -path '*candle-kernels-*/out/*.ptx' | head -n1)
{
    echo "# Written by scripts/gpu-bundle.sh; read by scripts/gpu-check.sh --bundle."
    echo "build_root=$root"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')"
    echo "version=$("$POLLARD_CUDA_BIN" --version)"
    echo "ptx_isa=$(sed -n 's/^\.version //p' "${ptx:-/dev/null}" | head -n1)"
    echo "binary=$bin"
} >"$manifest"
tests=0
while IFS=$'\t' read -r kind pkg path; do
    case $kind in
        bench)
            [[ $(basename "$path") == model_speed-* ]] || continue
            add "$path"
            echo "bench=$pkg $path" >>"$manifest"
            ;;
        test)
            n=$("$path" --list 2>/dev/null | grep -c 'cuda.*: test$' || true)
            [[ $n -gt 0 ]] || continue
            add "$path"
            echo "test=$pkg $path" >>"$manifest"
            tests=$((tests + n))
            ;;
    esac
done <<<"$built"
grep -q '^bench=' "$manifest" || die "cargo built no model_speed bench binary"
[[ $tests -gt 0 ]] || die "no test binary lists a CUDA test: was the build made with --features cuda?"
echo "cuda_tests=$tests" >>"$manifest"

mkdir -p "$(dirname "$out")"
tar -C "$stage" -cJf "$out.tmp" . && mv "$out.tmp" "$out"
mib=$(( ($(stat -c %s "$out") + 1048575) / 1048576 ))
sed 's/^/  /' "$manifest" >&2
say "wrote $out: $mib MiB, $(grep -c '^test=' "$manifest") test binaries with $tests CUDA tests, the binary and the bench"
[[ $mib -le $max_mib ]] || die "$out is $mib MiB, over POLLARD_BUNDLE_MAX_MIB=$max_mib"
