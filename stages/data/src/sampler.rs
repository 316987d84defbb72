//! Token shards -> training batches and validation windows. Training draws random windows of
//! `seq_len + 1` tokens (inputs are the first `seq_len`, targets the last `seq_len`) from a
//! counter-based stream keyed by (seed, window index), so the whole sequence of batches is a
//! function of the seed and the step: a checkpoint stores the step, and a resumed run draws
//! exactly what an uninterrupted one would. Validation takes fixed, disjoint windows.

use crate::error::{Error, Result};
use crate::rng;

/// One training batch: `batch` windows of `seq_len + 1` tokens, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `batch * (seq_len + 1)` ids.
    pub tokens: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    /// Start offset of each window in the shard (for logging and tests).
    pub offsets: Vec<usize>,
}

impl Batch {
    /// Window `i` (`seq_len + 1` ids).
    pub fn window(&self, i: usize) -> &[u32] {
        let w = self.seq_len + 1;
        &self.tokens[i * w..(i + 1) * w]
    }

    /// Model inputs, `batch * seq_len` ids row-major: each window without its last token.
    pub fn inputs(&self) -> Vec<u32> {
        (0..self.batch)
            .flat_map(|i| self.window(i)[..self.seq_len].iter().copied())
            .collect()
    }

    /// Next-token targets, `batch * seq_len` ids row-major: each window without its first token.
    pub fn targets(&self) -> Vec<u32> {
        (0..self.batch)
            .flat_map(|i| self.window(i)[1..].iter().copied())
            .collect()
    }
}

/// A seeded sampler of training windows over one token shard.
#[derive(Debug, Clone)]
pub struct WindowSampler<'a> {
    tokens: &'a [u32],
    seq_len: usize,
    batch: usize,
    seed: u64,
    /// The next step to draw; the data position a checkpoint saves.
    step: u64,
}

impl<'a> WindowSampler<'a> {
    /// A sampler at step 0. Needs at least `seq_len + 1` tokens.
    pub fn new(tokens: &'a [u32], seq_len: usize, batch: usize, seed: u64) -> Result<Self> {
        if seq_len == 0 {
            return Err(Error::Zero { field: "seq_len" });
        }
        if batch == 0 {
            return Err(Error::Zero { field: "batch" });
        }
        if tokens.len() < seq_len + 1 {
            return Err(Error::TooFewTokens {
                what: "train.bin",
                tokens: tokens.len(),
                needed: seq_len + 1,
            });
        }
        Ok(Self {
            tokens,
            seq_len,
            batch,
            seed,
            step: 0,
        })
    }

    /// The step the next [`Self::next_batch`] draws: save it to resume exactly.
    pub fn position(&self) -> u64 {
        self.step
    }

    /// Continues from a saved [`Self::position`].
    pub fn set_position(&mut self, step: u64) {
        self.step = step;
    }

    /// The batch of `step` (does not move the position).
    pub fn batch_at(&self, step: u64) -> Batch {
        let w = self.seq_len + 1;
        // Every start in 0..=len-w is possible, so every token can be drawn.
        let starts = (self.tokens.len() - w + 1) as u64;
        let mut tokens = Vec::with_capacity(self.batch * w);
        let mut offsets = Vec::with_capacity(self.batch);
        for row in 0..self.batch as u64 {
            let index = step.wrapping_mul(self.batch as u64).wrapping_add(row);
            let start = rng::below(rng::draw(self.seed, index), starts) as usize;
            offsets.push(start);
            tokens.extend_from_slice(&self.tokens[start..start + w]);
        }
        Batch {
            tokens,
            batch: self.batch,
            seq_len: self.seq_len,
            offsets,
        }
    }

    /// The batch at the current position; advances it by one step.
    pub fn next_batch(&mut self) -> Batch {
        let b = self.batch_at(self.step);
        self.step += 1;
        b
    }
}

/// The fixed validation set: disjoint windows of `seq_len + 1` tokens from the start of
/// `tokens`, at most `max_windows` of them (all when `None`), spread evenly over the shard when
/// there are more than asked. Deterministic: no seed.
pub fn validation_windows(
    tokens: &[u32],
    seq_len: usize,
    max_windows: Option<usize>,
) -> Result<Vec<&[u32]>> {
    if seq_len == 0 {
        return Err(Error::Zero { field: "seq_len" });
    }
    let w = seq_len + 1;
    let total = tokens.len() / w;
    if total == 0 {
        return Err(Error::TooFewTokens {
            what: "val.bin",
            tokens: tokens.len(),
            needed: w,
        });
    }
    let n = max_windows.map_or(total, |m| m.min(total));
    // Window k of n is the floor(k * total / n)-th disjoint window: evenly spaced, distinct.
    Ok((0..n)
        .map(|k| k * total / n)
        .map(|j| &tokens[j * w..(j + 1) * w])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn windows_are_contiguous_and_targets_shift_inputs() {
        let tokens = data(1000);
        let mut s = WindowSampler::new(&tokens, 16, 4, 9).unwrap();
        let b = s.next_batch();
        assert_eq!(b.tokens.len(), 4 * 17);
        for i in 0..4 {
            let win = b.window(i);
            assert_eq!(win[0] as usize, b.offsets[i]);
            assert!(
                win.windows(2).all(|p| p[1] == p[0] + 1),
                "window is a contiguous slice"
            );
        }
        let (inp, tgt) = (b.inputs(), b.targets());
        assert_eq!(inp.len(), 64);
        for i in 0..4 {
            assert_eq!(
                &inp[i * 16 + 1..(i + 1) * 16],
                &tgt[i * 16..(i + 1) * 16 - 1]
            );
        }
    }

    #[test]
    fn same_seed_same_batches_other_seed_differs() {
        let tokens = data(5000);
        let mut a = WindowSampler::new(&tokens, 32, 8, 1).unwrap();
        let mut b = WindowSampler::new(&tokens, 32, 8, 1).unwrap();
        let mut c = WindowSampler::new(&tokens, 32, 8, 2).unwrap();
        for _ in 0..5 {
            let (x, y, z) = (a.next_batch(), b.next_batch(), c.next_batch());
            assert_eq!(x, y);
            assert_ne!(x.offsets, z.offsets);
        }
    }

    #[test]
    fn resuming_from_a_saved_position_is_exact() {
        let tokens = data(5000);
        let mut full = WindowSampler::new(&tokens, 32, 4, 77).unwrap();
        let all: Vec<Batch> = (0..10).map(|_| full.next_batch()).collect();
        let mut first = WindowSampler::new(&tokens, 32, 4, 77).unwrap();
        for _ in 0..6 {
            first.next_batch();
        }
        let saved = first.position();
        assert_eq!(saved, 6);
        let mut resumed = WindowSampler::new(&tokens, 32, 4, 77).unwrap();
        resumed.set_position(saved);
        let rest: Vec<Batch> = (0..4).map(|_| resumed.next_batch()).collect();
        assert_eq!(&all[6..], &rest[..]);
    }

    #[test]
    fn offsets_cover_the_shard_including_both_ends() {
        let tokens = data(40);
        let s = WindowSampler::new(&tokens, 7, 16, 3).unwrap();
        let mut seen = [false; 33];
        for step in 0..200 {
            for &o in &s.batch_at(step).offsets {
                seen[o] = true;
            }
        }
        assert!(seen.iter().all(|&x| x), "every start 0..=32 drawn");
    }

    #[test]
    fn too_short_a_shard_is_refused() {
        let tokens = data(16);
        let err = WindowSampler::new(&tokens, 16, 1, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("16 tokens") && err.contains("17"), "{err}");
        assert!(WindowSampler::new(&tokens, 15, 1, 0).is_ok());
        assert!(WindowSampler::new(&tokens, 0, 1, 0)
            .unwrap_err()
            .to_string()
            .contains("seq_len"));
        assert!(WindowSampler::new(&tokens, 4, 0, 0)
            .unwrap_err()
            .to_string()
            .contains("batch"));
    }

    #[test]
    fn validation_windows_are_disjoint_fixed_and_spread() {
        let tokens = data(100);
        let all = validation_windows(&tokens, 9, None).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[3], &tokens[30..40]);
        let some = validation_windows(&tokens, 9, Some(3)).unwrap();
        assert_eq!(
            some.iter().map(|w| w[0]).collect::<Vec<_>>(),
            vec![0, 30, 60]
        );
        assert_eq!(validation_windows(&tokens, 9, Some(50)).unwrap().len(), 10);
        let err = validation_windows(&tokens[..5], 9, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("val.bin") && err.contains("5 tokens"), "{err}");
    }
}
