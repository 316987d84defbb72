//! What the machine offers and who holds it: the GPU inventory (probed through cudarc's driver
//! API with the `cuda` feature, linked the way candle links it so one cudarc serves both, or given as `--gpus 80GiB,80GiB` / `POLLARD_GPUS`), the CPU cores, and the
//! [`Pool`] that grants disjoint devices and cores to running stages as RAII [`Lease`]s.

use std::sync::{Arc, Mutex};

use crate::quantity::Bytes;
use crate::stage::Resources;

/// One GPU of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub ordinal: u32,
    pub name: String,
    /// Total memory in bytes.
    pub memory: u64,
}

/// The devices stages may be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub gpus: Vec<Gpu>,
    pub cpus: usize,
    /// Host memory in bytes (0: unknown, not limited).
    pub host_memory: u64,
    /// Where the GPU list came from (shown by `run --dry-run`).
    pub source: String,
}

/// The environment variable that replaces the probed GPU inventory.
pub const GPUS_ENV: &str = "POLLARD_GPUS";

/// The environment variable that replaces the machine's host memory (`64GiB`).
pub const HOST_MEMORY_ENV: &str = "POLLARD_HOST_MEMORY";

/// The machine's memory: `POLLARD_HOST_MEMORY`, else `MemTotal` of /proc/meminfo, else 0
/// (unknown: not limited).
pub fn host_memory() -> Result<u64, String> {
    if let Ok(v) = std::env::var(HOST_MEMORY_ENV) {
        if !v.trim().is_empty() {
            let b: Bytes = v
                .trim()
                .parse()
                .map_err(|e| format!("{HOST_MEMORY_ENV}=`{v}`: {e}"))?;
            return Ok(b.0);
        }
    }
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb.saturating_mul(1024)))
}

/// Parses `none` or a comma-separated list of memory sizes, one per device.
pub fn parse_gpu_spec(spec: &str) -> Result<Vec<Gpu>, String> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("none") || spec.is_empty() {
        return Ok(Vec::new());
    }
    spec.split(',')
        .enumerate()
        .map(|(i, part)| {
            let mem: Bytes = part
                .trim()
                .parse()
                .map_err(|e| format!("--gpus `{spec}`: device {i}: {e}"))?;
            if mem.0 == 0 {
                return Err(format!("--gpus `{spec}`: device {i} has no memory"));
            }
            Ok(Gpu {
                ordinal: i as u32,
                name: format!("gpu{i}"),
                memory: mem.0,
            })
        })
        .collect()
}

impl Inventory {
    /// `--gpus` wins, then `POLLARD_GPUS`, then probing.
    pub fn resolve(flag: Option<&str>) -> Result<Inventory, String> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let host_memory = host_memory()?;
        if let Some(spec) = flag {
            return Ok(Inventory {
                gpus: parse_gpu_spec(spec)?,
                cpus,
                host_memory,
                source: "--gpus".into(),
            });
        }
        if let Ok(spec) = std::env::var(GPUS_ENV) {
            if !spec.trim().is_empty() {
                return Ok(Inventory {
                    gpus: parse_gpu_spec(&spec)?,
                    cpus,
                    host_memory,
                    source: GPUS_ENV.into(),
                });
            }
        }
        let (gpus, source) = probe();
        Ok(Inventory {
            gpus,
            cpus,
            host_memory,
            source,
        })
    }

    /// No devices and no memory limit: for reading a plan's actions without placing it.
    pub fn unlimited() -> Inventory {
        Inventory {
            gpus: Vec::new(),
            cpus: 1,
            host_memory: 0,
            source: "not probed".into(),
        }
    }

    /// Refuses, with the numbers, a request no device set could ever meet.
    pub fn check(&self, r: &Resources) -> Result<(), String> {
        if self.host_memory > 0 && r.host_memory > self.host_memory {
            return Err(format!(
                "needs {} of host memory, but this machine has {} (set `resources.host_memory` if the estimate is wrong)",
                Bytes(r.host_memory),
                Bytes(self.host_memory)
            ));
        }
        if r.gpus == 0 {
            return Ok(());
        }
        let want = r.gpus as usize;
        let mem = Bytes(r.gpu_memory);
        let need = if r.gpu_memory > 0 {
            format!("{} GPU{} with {mem}", want, plural(want))
        } else {
            format!("{} GPU{}", want, plural(want))
        };
        if self.gpus.is_empty() {
            return Err(format!(
                "needs {need}, but there are no GPUs (inventory: {}; set --gpus or {GPUS_ENV} to declare some)",
                self.source
            ));
        }
        if self.gpus.len() < want {
            return Err(format!(
                "needs {need}, but there {} only {}",
                if self.gpus.len() == 1 { "is" } else { "are" },
                self.gpus.len()
            ));
        }
        let big_enough = self
            .gpus
            .iter()
            .filter(|g| g.memory >= r.gpu_memory)
            .count();
        if big_enough < want {
            let largest = Bytes(self.gpus.iter().map(|g| g.memory).max().unwrap_or(0));
            return Err(format!("needs {need}, largest has {largest}"));
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(feature = "cuda")]
fn probe() -> (Vec<Gpu>, String) {
    use cudarc::driver::result;
    // A driver too old for the kernels' PTX would grant GPUs that fail at the first kernel.
    if let Err(why) = crate::cuda_driver::check() {
        return (Vec::new(), why);
    }
    let attempt = || -> Result<Vec<Gpu>, cudarc::driver::DriverError> {
        result::init()?;
        let n = result::device::get_count()?;
        let mut gpus = Vec::new();
        for i in 0..n {
            let dev = result::device::get(i)?;
            let memory = unsafe { result::device::total_mem(dev)? } as u64;
            let name = result::device::get_name(dev).unwrap_or_else(|_| format!("cuda{i}"));
            gpus.push(Gpu {
                ordinal: i as u32,
                name,
                memory,
            });
        }
        Ok(gpus)
    };
    // A machine without a driver (or with the link-time stub) answers with an error, not a
    // panic; the inventory is then empty and says why.
    match attempt() {
        Ok(gpus) => (gpus, "cuda driver".into()),
        Err(e) => (Vec::new(), format!("cuda driver unavailable: {e:?}")),
    }
}

#[cfg(not(feature = "cuda"))]
fn probe() -> (Vec<Gpu>, String) {
    (Vec::new(), "built without the cuda feature".into())
}

struct PoolState {
    gpu_busy: Vec<bool>,
    cpus_free: usize,
    /// Host memory not promised to a running stage (u64::MAX when the machine's is unknown).
    host_free: u64,
    running: usize,
}

/// Grants resources to stages; never oversubscribes devices, cores or `--jobs`.
#[derive(Clone)]
pub struct Pool {
    inventory: Arc<Inventory>,
    jobs: usize,
    state: Arc<Mutex<PoolState>>,
}

/// What a running stage holds; released when dropped.
pub struct Lease {
    state: Arc<Mutex<PoolState>>,
    pub gpus: Vec<u32>,
    pub cpus: usize,
    /// Host memory promised to the stage (its estimate).
    pub host_memory: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for g in &self.gpus {
            s.gpu_busy[*g as usize] = false;
        }
        s.cpus_free += self.cpus;
        s.host_free = s.host_free.saturating_add(self.host_memory);
        s.running -= 1;
    }
}

impl Pool {
    /// `jobs`: at most this many stages at once (None: as many as resources allow).
    pub fn new(inventory: Inventory, jobs: Option<usize>) -> Pool {
        let state = PoolState {
            gpu_busy: vec![false; inventory.gpus.len()],
            cpus_free: inventory.cpus,
            host_free: if inventory.host_memory == 0 {
                u64::MAX
            } else {
                inventory.host_memory
            },
            running: 0,
        };
        Pool {
            jobs: jobs.unwrap_or(usize::MAX).max(1),
            inventory: Arc::new(inventory),
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The cores a request gets: its `cpus` clamped to the machine; for 0, all of them on a CPU
    /// stage, and a GPU's share of them on a GPU stage (so GPU stages still run side by side).
    pub fn cpus_for(&self, r: &Resources) -> usize {
        let total = self.inventory.cpus.max(1);
        if r.cpus == 0 && r.gpus > 0 {
            (total / self.inventory.gpus.len().max(1)).max(1)
        } else if r.cpus == 0 {
            total
        } else {
            (r.cpus as usize).min(total)
        }
    }

    /// A lease when the request fits now; None when it must wait.
    pub fn try_grant(&self, r: &Resources) -> Option<Lease> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.running >= self.jobs {
            return None;
        }
        let cpus = self.cpus_for(r);
        if cpus > s.cpus_free || r.host_memory > s.host_free {
            return None;
        }
        let mut gpus = Vec::new();
        for (i, g) in self.inventory.gpus.iter().enumerate() {
            if gpus.len() == r.gpus as usize {
                break;
            }
            if !s.gpu_busy[i] && g.memory >= r.gpu_memory {
                gpus.push(i);
            }
        }
        if gpus.len() < r.gpus as usize {
            return None;
        }
        for &g in &gpus {
            s.gpu_busy[g] = true;
        }
        s.cpus_free -= cpus;
        s.host_free -= r.host_memory;
        s.running += 1;
        Some(Lease {
            state: self.state.clone(),
            gpus: gpus
                .into_iter()
                .map(|g| self.inventory.gpus[g].ordinal)
                .collect(),
            cpus,
            host_memory: r.host_memory,
        })
    }

    pub fn running(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(spec: &str, cpus: usize) -> Inventory {
        Inventory {
            gpus: parse_gpu_spec(spec).unwrap(),
            cpus,
            host_memory: 0,
            source: "test".into(),
        }
    }

    fn gpu(n: u32, mem: &str) -> Resources {
        Resources {
            gpus: n,
            gpu_memory: mem.parse::<Bytes>().unwrap().0,
            cpus: 1,
            host_memory: 0,
        }
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(parse_gpu_spec("none").unwrap(), vec![]);
        let g = parse_gpu_spec("80GiB, 40GiB").unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].memory, 40 << 30);
        assert!(parse_gpu_spec("80GiB,lots")
            .unwrap_err()
            .contains("device 1"));
    }

    #[test]
    fn impossible_requests_are_refused_with_numbers() {
        let i = inv("80GiB,80GiB", 4);
        assert_eq!(
            i.check(&gpu(2, "96GiB")).unwrap_err(),
            "needs 2 GPUs with 96.0 GiB, largest has 80.0 GiB"
        );
        assert_eq!(
            i.check(&gpu(3, "0")).unwrap_err(),
            "needs 3 GPUs, but there are only 2"
        );
        assert!(i.check(&gpu(2, "80GiB")).is_ok());
        assert!(inv("none", 4)
            .check(&gpu(1, "0"))
            .unwrap_err()
            .contains("no GPUs"));
    }

    #[test]
    fn grants_are_disjoint_and_released_on_drop() {
        let pool = Pool::new(inv("80GiB,80GiB", 8), None);
        let a = pool.try_grant(&gpu(1, "10GiB")).unwrap();
        let b = pool.try_grant(&gpu(1, "10GiB")).unwrap();
        assert_ne!(a.gpus, b.gpus);
        assert!(
            pool.try_grant(&gpu(1, "10GiB")).is_none(),
            "a third must wait"
        );
        drop(a);
        let c = pool.try_grant(&gpu(1, "10GiB")).unwrap();
        assert_eq!(c.gpus, vec![0]);
        assert!(
            pool.try_grant(&gpu(0, "0")).is_some(),
            "CPU stages do not wait for GPUs"
        );
    }

    #[test]
    fn host_memory_is_scheduled_and_refused_with_numbers() {
        let mut i = inv("none", 8);
        i.host_memory = 10 << 30;
        let host = |g: u64| Resources {
            cpus: 1,
            host_memory: g << 30,
            ..Resources::default()
        };
        assert_eq!(
            i.check(&host(11)).unwrap_err(),
            "needs 11.0 GiB of host memory, but this machine has 10.0 GiB (set `resources.host_memory` if the estimate is wrong)"
        );
        let pool = Pool::new(i, None);
        let a = pool.try_grant(&host(6)).unwrap();
        assert!(
            pool.try_grant(&host(6)).is_none(),
            "6 + 6 GiB exceed the machine's 10 GiB"
        );
        let _small = pool.try_grant(&host(4)).unwrap();
        drop(a);
        assert!(pool.try_grant(&host(6)).is_some());
    }

    #[test]
    fn cores_and_jobs_limit_concurrency() {
        let pool = Pool::new(inv("none", 2), None);
        let cpu = |n| Resources {
            cpus: n,
            ..Resources::default()
        };
        let a = pool.try_grant(&cpu(1)).unwrap();
        let _b = pool.try_grant(&cpu(1)).unwrap();
        assert!(pool.try_grant(&cpu(1)).is_none());
        drop(a);
        assert!(pool.try_grant(&cpu(0)).is_none(), "0 wants every core");
        let pool = Pool::new(inv("80GiB,80GiB", 4), None);
        let gpu_all = Resources {
            gpus: 1,
            cpus: 0,
            ..Resources::default()
        };
        let _a = pool.try_grant(&gpu_all).unwrap();
        let b = pool
            .try_grant(&gpu_all)
            .expect("GPU stages asking for `all` cores still share them");
        assert_eq!(b.cpus, 2);
        let pool = Pool::new(inv("none", 8), Some(1));
        let _a = pool.try_grant(&cpu(1)).unwrap();
        assert!(pool.try_grant(&cpu(1)).is_none(), "--jobs 1");
    }
}
