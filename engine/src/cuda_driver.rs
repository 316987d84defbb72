//! Whether this machine's NVIDIA driver can run this build's kernels. candle ships its kernels
//! as PTX, and a driver JIT-compiles PTX only up to the ISA of the newest CUDA it supports: a
//! build from a newer toolkit than the driver opens the GPU fine and then fails at its first
//! kernel with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`. The GPU probe (resources) and a stage
//! opening its GPU (stages/src/common.rs) ask here first, so the user reads the two versions
//! and the way out instead.

/// The CUDA version whose toolkit compiled this build's kernels, as the driver API numbers
/// versions (1000 x major + 10 x minor: 13000 is 13.0); 0 for a CPU build or when unknown.
pub fn build_version() -> i32 {
    numbered(env!("POLLARD_BUILD_CUDA")).unwrap_or(0)
}

/// `13.0` (nvcc's release) -> 13000.
fn numbered(release: &str) -> Option<i32> {
    let (major, minor) = release.split_once('.')?;
    Some(major.parse::<i32>().ok()? * 1000 + minor.parse::<i32>().ok()? * 10)
}

/// `13040` -> `13.4`.
fn dotted(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Refuses a driver older than the toolkit that compiled the kernels (`built` 0: nothing known
/// to refuse).
pub fn check_versions(driver: i32, built: i32) -> Result<(), String> {
    if built == 0 || driver >= built {
        return Ok(());
    }
    Err(format!(
        "the NVIDIA driver supports CUDA {d}, but this build's kernels are PTX from CUDA {b}, \
         which that driver cannot load: update the driver to one for CUDA {b} or newer, or \
         rebuild with a CUDA {d} (or older) toolkit (scripts/cuda-build.sh pins CUDA 13.0 in \
         scripts/cuda-wheels.txt)",
        d = dotted(driver),
        b = dotted(built)
    ))
}

/// Asks the driver which CUDA it supports and checks this build against it. Without the
/// driver (or with the link-time stub) this is an error too, saying so.
#[cfg(feature = "cuda")]
pub fn check() -> Result<(), String> {
    use cudarc::driver::{result, sys};
    result::init().map_err(|e| format!("cuda driver unavailable: {e:?}"))?;
    let mut driver: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer it is given.
    let status = unsafe { sys::cuDriverGetVersion(&mut driver) };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuda driver version unavailable: {status:?}"));
    }
    check_versions(driver, build_version())
}

/// A CPU build runs no kernels: nothing to check.
#[cfg(not(feature = "cuda"))]
pub fn check() -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_driver_is_refused_with_both_versions_and_the_way_out() {
        insta::assert_snapshot!(check_versions(13000, 13040).unwrap_err());
    }

    #[test]
    fn an_equal_or_newer_driver_or_an_unknown_build_passes() {
        assert_eq!(check_versions(13000, 13000), Ok(()));
        assert_eq!(check_versions(13040, 13000), Ok(()));
        assert_eq!(check_versions(12080, 0), Ok(()));
    }

    #[test]
    fn versions_read_as_major_dot_minor() {
        assert_eq!(dotted(13000), "13.0");
        assert_eq!(dotted(12090), "12.9");
        assert_eq!(numbered("13.0"), Some(13000));
        assert_eq!(numbered("12.9"), Some(12090));
        assert_eq!(numbered(""), None);
    }
}
