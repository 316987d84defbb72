//! Token shards, the dataset artifact's payload: `train.bin` / `val.bin` hold little-endian u32
//! token ids back to back. Written once by the `dataset` stage, memory-mapped read-only by
//! every stage that trains or evaluates on it, validated on open (length, id range).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

// The mapped bytes are viewed in place as native u32s: that is the file's format only on a
// little-endian machine. Every platform pollard targets (x86-64, aarch64) is.
#[cfg(target_endian = "big")]
compile_error!(
    "pollard-data maps little-endian token shards in place and needs a little-endian target"
);

/// Writes `tokens` as little-endian u32 to `path` (created or truncated).
pub fn write_tokens(path: &Path, tokens: &[u32]) -> Result<()> {
    let file = File::create(path).map_err(Error::io("create", path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(bytemuck::cast_slice(tokens))
        .map_err(Error::io("write", path))?;
    out.into_inner()
        .map_err(|e| Error::Io {
            op: "write",
            path: path.to_owned(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(Error::io("sync", path))
}

/// A read-only, memory-mapped shard of token ids, all below the vocabulary size it was
/// opened with.
#[derive(Debug)]
pub struct TokenShard {
    path: PathBuf,
    /// `None` for an empty file (mapping zero bytes is an error on some systems).
    map: Option<Mmap>,
}

impl TokenShard {
    /// Maps `path` and checks that it is a whole number of u32s, every id below `vocab`.
    pub fn open(path: &Path, vocab: u32) -> Result<Self> {
        let file = File::open(path).map_err(Error::io("open", path))?;
        let len = file.metadata().map_err(Error::io("stat", path))?.len();
        if len % 4 != 0 {
            return Err(Error::ShardLength {
                path: path.to_owned(),
                len,
            });
        }
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and the file is an immutable cache object (the
            // cache makes objects read-only); a concurrent writer would break that contract.
            Some(unsafe { Mmap::map(&file) }.map_err(Error::io("mmap", path))?)
        };
        let shard = Self {
            path: path.to_owned(),
            map,
        };
        if let Some((position, &id)) = shard
            .tokens()
            .iter()
            .enumerate()
            .find(|(_, &id)| id >= vocab)
        {
            return Err(Error::TokenOutOfRange {
                path: path.to_owned(),
                id,
                position,
                vocab,
            });
        }
        Ok(shard)
    }

    /// The token ids.
    pub fn tokens(&self) -> &[u32] {
        match &self.map {
            // A page-aligned mapping of a multiple of 4 bytes always casts.
            Some(map) => bytemuck::try_cast_slice(&map[..])
                .expect("mmap is page-aligned and its length a multiple of 4"),
            None => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.tokens().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_open_round_trips_little_endian() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        write_tokens(&path, &[1, 2, 0x0102_0304, 7]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[8..12], &[4, 3, 2, 1], "little-endian on disk");
        let shard = TokenShard::open(&path, 0x0102_0305).unwrap();
        assert_eq!(shard.tokens(), &[1, 2, 0x0102_0304, 7]);
    }

    #[test]
    fn wrong_length_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val.bin");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let err = TokenShard::open(&path, 10).unwrap_err().to_string();
        assert!(err.contains("val.bin") && err.contains("10 bytes"), "{err}");
    }

    #[test]
    fn id_out_of_range_is_named_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        write_tokens(&path, &[3, 4, 256, 5]).unwrap();
        let err = TokenShard::open(&path, 256).unwrap_err().to_string();
        assert!(
            err.contains("train.bin") && err.contains("256") && err.contains("position 2"),
            "{err}"
        );
    }

    #[test]
    fn empty_shard_opens_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val.bin");
        write_tokens(&path, &[]).unwrap();
        assert!(TokenShard::open(&path, 1).unwrap().is_empty());
    }

    #[test]
    fn missing_file_is_named() {
        let err = TokenShard::open(Path::new("/nonexistent/train.bin"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/train.bin"), "{err}");
    }
}
