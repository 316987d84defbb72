//! Hashing file contents with blake3. Small files stream through one core; large files are
//! read in big chunks by one thread while blake3's rayon tree mode hashes the previous chunk
//! on all cores, so a multi-gigabyte checkpoint hashes at memory speed. We read rather than
//! mmap on purpose: a file truncated under an mmap kills the process with SIGBUS, while a
//! read sees the change and we report it.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::mpsc::sync_channel;

use crate::digest::Digest;
use crate::error::{io_err, Error, Result};

/// Files at least this large are hashed with the multi-threaded pipeline.
pub(crate) const PARALLEL_MIN: u64 = 4 << 20;
/// Chunk size of the pipeline: large enough for blake3's rayon split to pay off.
const CHUNK: usize = 16 << 20;

/// The parts of a file's stat that the memo keys on, plus what commit needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
}

impl FileStat {
    pub(crate) fn of(md: &Metadata) -> Self {
        FileStat {
            size: md.len(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()),
            ino: md.ino(),
            mode: md.mode(),
            nlink: md.nlink(),
        }
    }

    pub(crate) fn executable(&self) -> bool {
        self.mode & 0o111 != 0
    }
}

/// Hashes the regular file at `path`, returning its digest and the stat it had. Fails with
/// [`Error::ChangedWhileHashing`] when its size or mtime moved during the read.
pub(crate) fn hash_path(path: &Path) -> Result<(Digest, FileStat)> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let md = file.metadata().map_err(io_err("stat", path))?;
    if !md.is_file() {
        return Err(Error::UnsupportedFile { path: path.to_path_buf(), kind: "folder or special file (not a regular file)" });
    }
    let before = FileStat::of(&md);
    let (hash, read) = if before.size >= PARALLEL_MIN {
        hash_large(&file)
    } else {
        hash_small(&file)
    }
    .map_err(io_err("read", path))?;
    let after = FileStat::of(&file.metadata().map_err(io_err("stat", path))?);
    if read != before.size || after.size != before.size || after.mtime_ns != before.mtime_ns {
        return Err(Error::ChangedWhileHashing {
            path: path.to_path_buf(),
            detail: format!(
                "size {} before, {} read, {} after; mtime {} ns before, {} ns after",
                before.size, read, after.size, before.mtime_ns, after.mtime_ns
            ),
        });
    }
    Ok((Digest::from_hash(hash), before))
}

fn hash_small(mut file: &File) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize(), total))
}

/// Fills `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Two buffers circulate: a reader thread fills one while rayon hashes the other.
fn hash_large(file: &File) -> io::Result<(blake3::Hash, u64)> {
    let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(1);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        empty_tx.send(vec![0u8; CHUNK]).expect("the receiver is alive in this scope");
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut offset = 0u64;
            while let Ok(mut buf) = empty_rx.recv() {
                buf.resize(CHUNK, 0);
                let msg = read_at_full(file, &mut buf, offset).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let end = match &msg {
                    Ok(b) => b.len() < CHUNK,
                    Err(_) => true,
                };
                if let Ok(b) = &msg {
                    offset += b.len() as u64;
                }
                if full_tx.send(msg).is_err() || end {
                    return;
                }
            }
        });
        // Own both channel ends here so that leaving early (an error) unblocks the reader.
        let (full_rx, empty_tx) = (full_rx, empty_tx);
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        for msg in full_rx.iter() {
            let buf = msg?;
            let end = buf.len() < CHUNK;
            hasher.update_rayon(&buf);
            total += buf.len() as u64;
            if end || empty_tx.send(buf).is_err() {
                break;
            }
        }
        Ok((hasher.finalize(), total))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_paths_agree_with_one_shot_blake3() {
        let dir = tempfile::tempdir().unwrap();
        // Sizes around the chunk and threshold edges.
        for size in [0usize, 1, 65_536, PARALLEL_MIN as usize, CHUNK, CHUNK + 1, 2 * CHUNK + 12_345] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            let (d, st) = hash_path(&p).unwrap();
            assert_eq!(d, Digest::of(&data), "size {size}");
            assert_eq!(st.size, size as u64);
        }
    }

    #[test]
    fn a_folder_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = hash_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = hash_path(Path::new("/nonexistent/pollard/x.bin")).unwrap_err().to_string();
        assert!(err.contains("cannot open `/nonexistent/pollard/x.bin`"), "{err}");
    }
}
