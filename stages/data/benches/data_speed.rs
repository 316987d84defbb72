//! Speed of the data layer on the default recipe's scale (2M synthetic words), as ratios
//! against baselines measured in the same run: corpus generation against copying its bytes,
//! BPE encoding against the byte tokenizer, and BPE training time per training-text size.
//!
//! Run: `cargo bench -p pollard-data --profile dev --bench data_speed [-- WORDS]`.

use std::time::Instant;

use pollard_data::{split, synthetic, Tokenizer};

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn main() {
    let words: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    println!("available cores: {}", available_cores());

    let t = Instant::now();
    let text = synthetic::generate(words, 1234);
    let gen_s = secs(t);
    let t = Instant::now();
    let copy = text.clone();
    let copy_s = secs(t);
    assert_eq!(copy.len(), text.len());
    println!(
        "generate {words} words ({:.1} MB): {gen_s:.3} s = {:.1} M words/s; copying the same bytes: {copy_s:.4} s (generation / copy = {:.0}x)",
        text.len() as f64 / 1e6,
        words as f64 / gen_s / 1e6,
        gen_s / copy_s
    );

    let docs = split::documents(&text);
    println!("documents: {}", docs.len());

    for &fraction in &[0.25f64, 0.5, 1.0] {
        let n = ((docs.len() as f64) * fraction) as usize;
        let t = Instant::now();
        let tok =
            Tokenizer::train_bpe(&docs[..n], 1024).expect("training on generated text succeeds");
        println!(
            "train BPE 1024 on {:.0}% of the text ({} docs, ~{:.2}M words): {:.2} s (vocab {})",
            fraction * 100.0,
            n,
            words as f64 * fraction / 1e6,
            secs(t),
            tok.vocab_size()
        );
    }

    let bpe = Tokenizer::train_bpe(&docs, 1024).expect("training succeeds");
    let byte = Tokenizer::byte();
    let t = Instant::now();
    let byte_ids: usize = byte
        .encode_batch(&docs)
        .expect("byte encoding cannot fail")
        .iter()
        .map(Vec::len)
        .sum();
    let byte_s = secs(t);
    let t = Instant::now();
    let bpe_ids: usize = bpe
        .encode_batch(&docs)
        .expect("encoding succeeds")
        .iter()
        .map(Vec::len)
        .sum();
    let bpe_s = secs(t);
    println!(
        "encode: byte {byte_ids} ids in {byte_s:.3} s; BPE {bpe_ids} ids in {bpe_s:.3} s ({:.2} M tokens/s, {:.2} bytes/token; BPE / byte time = {:.0}x)",
        bpe_ids as f64 / bpe_s / 1e6,
        text.len() as f64 / bpe_ids as f64,
        bpe_s / byte_s
    );

    let dir = std::env::temp_dir().join(format!("pollard-data-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let t = Instant::now();
    let meta =
        pollard_data::write_dataset(&dir, &docs, &bpe, 1024, 0.05, "bench".into(), Some(1234))
            .expect("write");
    println!(
        "write_dataset (encode + split + write): {:.2} s, train {} / val {} tokens",
        secs(t),
        meta.train_tokens,
        meta.val_tokens
    );
    // Fingerprints to compare across processes and thread counts (RAYON_NUM_THREADS=1 vs 2):
    // the tokenizer and the shards must not depend on either.
    for f in [
        pollard_data::TOKENIZER_FILE,
        pollard_data::TRAIN_FILE,
        pollard_data::VAL_FILE,
    ] {
        let bytes = std::fs::read(dir.join(f)).expect("written above");
        println!("fnv1a64({f}) = {:016x}", fnv1a64(&bytes));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
