//! Python's `random.Random` (MT19937 seeded by `init_by_array`) and its `sample`, bit for bit:
//! lm-evaluation-harness draws few-shot examples with `Random(1234).sample(docs, n + 1)` from one
//! generator shared by all documents in order (lm_eval/api/samplers.py `ContextSampler`), so the
//! same draws give the same prompts as the harness for the same file and seed.

const N: usize = 624;
const M: usize = 397;

/// The Mersenne Twister state as CPython's `_randommodule.c` keeps it.
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed: the key is the seed's 32-bit words,
    /// least significant first (CPython `random_seed` -> `init_by_array`).
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut r = Self {
            mt: [0; N],
            index: N,
        };
        r.init_genrand(19650218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1664525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            self.mt[i] = 1812433253u32
                .wrapping_mul(self.mt[i - 1] ^ (self.mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `1 <= k <= 32`.
    fn getrandbits(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow_with_getrandbits(n)`: rejection sampling on `n.bit_length()` bits.
    fn randbelow(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// Indices that `random.sample(range(n), k)` returns, in order (CPython 3.11's algorithm:
    /// a shrinking pool for small populations, rejection on a set of picks for large ones).
    /// Populations past 2^32 items are out of scope (task files are far smaller).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut picked = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while picked.contains(&j) {
                    j = self.randbelow(n);
                }
                picked.insert(j);
                out.push(j);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11.7:
    //   r = random.Random(1234); [r.getrandbits(32) for _ in range(3)]
    //   random.Random(1234).sample(range(10), 3); random.Random(1234).sample(range(1000), 7)
    //   r = random.Random(1234); r.sample(range(50), 3), r.sample(range(50), 3)
    const PY_WORDS: [u32; 3] = [4150886329, 3342196574, 1892932127];
    const PY_SMALL: [usize; 3] = [7, 1, 0];
    const PY_LARGE: [usize; 7] = [989, 796, 451, 119, 7, 92, 932];
    const PY_TWO: ([usize; 3], [usize; 3]) = ([49, 28, 7], [0, 5, 37]);
    #[test]
    fn matches_cpython_random_for_seed_1234() {
        let mut r = PyRandom::new(1234);
        let words: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(words, PY_WORDS);
        assert_eq!(PyRandom::new(1234).sample(10, 3), PY_SMALL);
        assert_eq!(PyRandom::new(1234).sample(1000, 7), PY_LARGE);
        // One generator across calls, as the harness's sampler keeps it across documents.
        let mut r = PyRandom::new(1234);
        let two = (r.sample(50, 3), r.sample(50, 3));
        assert_eq!(
            (two.0.as_slice(), two.1.as_slice()),
            (&PY_TWO.0[..], &PY_TWO.1[..])
        );
    }
}
