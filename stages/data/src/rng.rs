//! Seeded randomness shared by the corpus generator and the window sampler: SplitMix64, whose
//! n-th output is a pure function of (seed, n), so a sampler position is just a counter and a
//! resumed run regenerates exactly the same draws.

/// The golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective mix of 64 bits (Steele, Lea & Flood, 2014).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `index`-th draw of the stream keyed by `seed`: counter-based, so any draw can be
/// regenerated without replaying the ones before it. Streams of different seeds are decorrelated
/// by mixing the seed first.
#[inline]
pub fn draw(seed: u64, index: u64) -> u64 {
    mix64(mix64(seed).wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// Maps a uniform 64-bit value into `0..n` without division (Lemire's multiply-shift; the bias
/// is below n / 2^64, far under anything a window offset or a word choice could show).
#[inline]
pub fn below(x: u64, n: u64) -> u64 {
    ((x as u128 * n as u128) >> 64) as u64
}

/// A sequential SplitMix64 generator for the corpus generator's inner loop.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: mix64(seed) }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..n` (n > 0).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        below(self.next_u64(), n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    #[inline]
    pub fn chance(&mut self, percent: u64) -> bool {
        below(self.next_u64(), 100) < percent
    }

    /// A uniformly chosen element of a non-empty slice.
    #[inline]
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_matches_the_sequential_stream() {
        // The counter-based form and the sequential generator are the same stream.
        let mut rng = Rng::new(42);
        for i in 0..100 {
            assert_eq!(rng.next_u64(), draw(42, i));
        }
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut seen = [0u32; 7];
        for i in 0..7000 {
            let v = below(draw(3, i), 7) as usize;
            seen[v] += 1;
        }
        // Each bucket expects 1000; a fair generator stays well within +-20%.
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn different_seeds_give_different_streams() {
        let a: Vec<u64> = (0..8).map(|i| draw(1, i)).collect();
        let b: Vec<u64> = (0..8).map(|i| draw(2, i)).collect();
        assert_ne!(a, b);
    }
}
