//! Records what the binary was built for, so `pollard --version` can name it: for a CUDA build
//! the toolkit version (from `nvcc --version`, the same source cudarc and candle's kernel build
//! use) and the compute capability the kernels target (`CUDA_COMPUTE_CAP`, else the first GPU
//! `nvidia-smi` reports, as candle's kernel build decides it). The toolkit version is also kept
//! alone, as the oldest driver CUDA that can load the kernels (cuda_driver.rs).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=PATH");
    let cuda_feature = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let release = if cuda_feature { nvcc_release() } else { None };
    let described = if cuda_feature {
        let cuda = release.as_deref().unwrap_or("unknown");
        let cap = compute_cap().unwrap_or_else(|| "unknown".into());
        format!("CUDA {cuda}, compute capability {cap}")
    } else {
        "CPU only, built without the cuda feature".into()
    };
    println!("cargo:rustc-env=POLLARD_BUILD_TARGET={described}");
    // For cuda_driver.rs: the driver must support at least this CUDA to load the kernels' PTX
    // (empty: a CPU build, or nvcc did not say).
    println!(
        "cargo:rustc-env=POLLARD_BUILD_CUDA={}",
        release.unwrap_or_default()
    );
}

/// `release 13.4` from `nvcc --version`.
fn nvcc_release() -> Option<String> {
    let out = Command::new("nvcc").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let after = text.split("release ").nth(1)?;
    Some(after.split(',').next()?.trim().to_string())
}

/// `90` -> `9.0 (sm_90)`.
fn compute_cap() -> Option<String> {
    let raw = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(v) => v,
        Err(_) => {
            let out = Command::new("nvidia-smi")
                .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()?
                .trim()
                .replace('.', "")
        }
    };
    let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 2 {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(format!("{major}.{minor} (sm_{digits})"))
}
