#!/usr/bin/env bash
# Builds pollard's CUDA variant: the release binary with `--features cuda` and every CUDA test
# binary (`cargo test --release --features cuda --no-run`), on any Linux x86_64 machine, with or
# without a GPU or an NVIDIA driver. Writes target/cuda-env.sh, which sets what running those
# binaries needs (`. target/cuda-env.sh && target/cuda/release/pollard --version`), and
# target/cuda-build-env.sh, the build's environment for further cargo commands.
#
# The toolkit: $CUDA_HOME if it holds bin/nvcc, else NVIDIA's PyPI wheels pinned in
# scripts/cuda-wheels.txt (CUDA 13.0: its PTX loads on every r580+ driver; the file says why),
# installed once into a venv under $POLLARD_CUDA_CACHE named by the pin file's digest (default
# ~/.cache/pollard; cache that folder and ~/.cache/pip in CI).
# The wheels ship only versioned .so.N files, so an unversioned symlink folder goes on
# LIBRARY_PATH for the linker. Without a driver, libcuda.so.1 is a link-time stub that exports
# the cu* symbols of cudarc's driver bindings and answers every call with
# CUDA_ERROR_STUB_LIBRARY; cuda-env.sh puts it on LD_LIBRARY_PATH only where no real driver
# is installed, so pollard then reports "no GPU" instead of failing to start.
#
# Environment: CUDA_HOME (use this toolkit), CUDA_COMPUTE_CAP (default: what nvidia-smi says,
# else 90, i.e. sm_90a for H100/H200), POLLARD_CUDA_CACHE, POLLARD_CUDA_WHEELS (a pip
# requirements file in place of scripts/cuda-wheels.txt),
# CARGO_TARGET_DIR (default target/cuda, so the CPU build in target/ stays as it is).
# The build profile is release for both binary and tests: candle's kernels (most of the cold
# build time) then compile once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$SECONDS
say() { echo "cuda-build: $*" >&2; }
die() { say "error: $*"; exit 1; }

wheels=${POLLARD_CUDA_WHEELS:-$root/scripts/cuda-wheels.txt}
cache=${POLLARD_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pollard}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup)"
command -v cc >/dev/null || die "cc not found: a C compiler builds the driver stub and links"

# 1. The toolkit.
if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
    cuda_root=$CUDA_HOME
    say "toolkit: CUDA_HOME=$cuda_root"
else
    command -v python3 >/dev/null || die "python3 not found: it installs the CUDA toolkit wheels (or set CUDA_HOME)"
    [[ -f "$wheels" ]] || die "no wheel pin file at $wheels"
    venv=$cache/cuda-$(sha256sum "$wheels" | cut -c1-12)
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import nvidia' 2>/dev/null \
        || [[ ! -f "$venv/.complete" ]]; then
        say "installing the CUDA wheels pinned in $wheels into $venv (once; later runs reuse it)"
        mkdir -p "$cache"
        rm -rf "$venv"
        python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
        "$venv/bin/pip" install --disable-pip-version-check -q -r "$wheels" \
            || die "pip could not install the CUDA wheels pinned in $wheels from PyPI"
        touch "$venv/.complete"
    fi
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cuda_root=$(ls -d "$site"/nvidia/cu* 2>/dev/null | sort -V | tail -n1)
    [[ -n "$cuda_root" && -x "$cuda_root/bin/nvcc" ]] || die "no nvcc under $site/nvidia/cu*"
    say "toolkit: wheels at $cuda_root"
fi
lib_dir=$cuda_root/lib
[[ -d "$cuda_root/lib64" ]] && lib_dir=$cuda_root/lib64
export PATH=$cuda_root/bin:$PATH
export CUDA_HOME=$cuda_root
release=$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
say "nvcc $release"

# 2. Compute capability: as candle's kernel build would find it, else Hopper.
if [[ -z "${CUDA_COMPUTE_CAP:-}" ]]; then
    if cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1) \
        && [[ -n "$cap" ]]; then
        export CUDA_COMPUTE_CAP=${cap//./}
    else
        export CUDA_COMPUTE_CAP=90
    fi
fi
say "compute capability $CUDA_COMPUTE_CAP"

# 3. Link folders: unversioned names for the wheels' libraries; the driver or its stub.
link=$CARGO_TARGET_DIR/cuda-link
stub=$CARGO_TARGET_DIR/cuda-stub
mkdir -p "$link" "$stub"
for f in "$lib_dir"/lib*.so.*; do
    base=$(basename "$f")
    ln -sf "$f" "$link/${base%%.so.*}.so"
done
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
real_driver=$("$ldconfig" -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
if [[ -n "$real_driver" ]]; then
    say "driver: $real_driver"
    ln -sf "$real_driver" "$link/libcuda.so"
    rm -f "$stub"/libcuda.so*
else
    rm -f "$link/libcuda.so"
    cudarc_manifest=$(cargo metadata --locked --format-version 1 --features cuda \
        | grep -oE '"manifest_path":"[^"]*/cudarc-[0-9][^"]*/Cargo.toml"' | head -n1 | cut -d'"' -f4)
    cudarc_dir=$(dirname "${cudarc_manifest:-/nonexistent/Cargo.toml}")
    bindings=$cudarc_dir/src/driver/sys/mod.rs
    [[ -f "$bindings" ]] || die "cudarc's driver bindings not found at $bindings"
    {
        echo "/* Link-time stand-in for libcuda.so.1: every call returns CUDA_ERROR_STUB_LIBRARY (34). */"
        grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$bindings" | awk '{print $4}' | sort -u \
            | sed 's/.*/int &(void) { return 34; }/'
    } >"$stub/libcuda-stub.c"
    cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so.1" "$stub/libcuda-stub.c"
    ln -sf libcuda.so.1 "$stub/libcuda.so"
    say "driver: none; linking against the stub $stub/libcuda.so.1 ($(grep -c '^int' "$stub/libcuda-stub.c") symbols)"
fi
linker_path=$link
[[ -n "$real_driver" ]] || linker_path=$link:$stub
export LIBRARY_PATH=$linker_path${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$lib_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# 4. Build (target/cuda-build-env.sh repeats this environment for later cargo commands).
cat >"$root/target/cuda-build-env.sh" <<EOF
# Written by scripts/cuda-build.sh: the environment its cargo commands ran in.
export PATH="$cuda_root/bin:\$PATH" CUDA_HOME="$cuda_root" CUDA_COMPUTE_CAP="$CUDA_COMPUTE_CAP"
export LIBRARY_PATH="$LIBRARY_PATH" LD_LIBRARY_PATH="$LD_LIBRARY_PATH"
export CARGO_TARGET_DIR="$CARGO_TARGET_DIR"
EOF
say "building into $CARGO_TARGET_DIR"
cargo build --release --locked --features cuda --bin pollard
cargo test --release --locked --workspace --features cuda --no-run

# 5. What running the binaries needs.
env_file=$root/target/cuda-env.sh
cat >"$env_file" <<EOF
# Written by scripts/cuda-build.sh: source before running $CARGO_TARGET_DIR/release/pollard or
# the CUDA test binaries. The driver stub goes on the library path only where no NVIDIA
# driver is found (no nvidia-smi, no libcuda.so.1 known to the loader or in a library folder):
# there pollard starts and reports no GPU; anywhere else it would hide the real driver.
export POLLARD_CUDA_BIN="$CARGO_TARGET_DIR/release/pollard"
export LD_LIBRARY_PATH="$lib_dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
pollard_real_driver() {
    command -v nvidia-smi >/dev/null && return 0
    $ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' && return 0
    local d IFS=:
    for d in \$LD_LIBRARY_PATH /usr/local/nvidia/lib64 /usr/lib/wsl/lib; do
        [ -e "\$d/libcuda.so.1" ] && [ "\$d" != "$stub" ] && return 0
    done
    return 1
}
pollard_real_driver || export LD_LIBRARY_PATH="$stub:\$LD_LIBRARY_PATH"
unset -f pollard_real_driver
EOF
say "wrote $env_file"
version=$(. "$env_file" && "$CARGO_TARGET_DIR/release/pollard" --version) || die "the built binary does not start"
[[ "$version" == *"CUDA $release"* ]] || die "the built binary does not name its CUDA build: $version"
say "$version"
say "done in $((SECONDS - start)) s"
