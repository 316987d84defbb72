//! A small seeded generator for weight initialisation and tests (candle's CPU RNG cannot be
//! seeded, so `Tensor::randn` is not reproducible).
//!
//! SplitMix64 for uniform bits and Box-Muller for normals: simple, fast, and the same stream on
//! every platform, which is what a reproducible `Llama::init(config, seed)` needs.

/// Deterministic stream of uniform and normal samples from a 64-bit seed.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
    spare: Option<f64>,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng {
            state: seed,
            spare: None,
        }
    }

    /// A generator for a named sub-stream (e.g. one tensor), independent of visiting order.
    pub fn derive(seed: u64, name: &str) -> Self {
        // FNV-1a of the name mixed with the seed: stable across runs and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        SeededRng::new(seed ^ h.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1], never 0 (so `ln` is finite).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal sample.
    pub fn normal(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    /// `n` samples of N(mean, std^2) as f32.
    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (mean + std * self.normal()) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let a = SeededRng::new(7).normal_vec(100, 0.0, 1.0);
        let b = SeededRng::new(7).normal_vec(100, 0.0, 1.0);
        let c = SeededRng::new(8).normal_vec(100, 0.0, 1.0);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn normal_samples_have_unit_variance() {
        let v = SeededRng::new(1).normal_vec(100_000, 0.0, 1.0);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
