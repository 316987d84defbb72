//! Hashing file contents with blake3. Small files stream through one core; large files are
//! cut into blake3 subtrees that rayon workers read and hash in parallel, so a multi-gigabyte
//! checkpoint hashes at memory speed. We read rather than mmap on purpose: a file truncated
//! under an mmap kills the process with SIGBUS, while a read sees the change and we report it.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::digest::Digest;
use crate::error::{io_err, Error, Result};

/// Files at least this large are hashed as parallel subtrees (see `hash_large`).
pub(crate) const PARALLEL_MIN: u64 = 4 << 20;
/// The largest subtree one rayon task reads and hashes (a power of two, so that subtrees
/// split from a larger one are valid blake3 subtrees).
const LEAF: u64 = 4 << 20;

/// Bytes read per `pread` inside a leaf: small enough that the copy is still in L2 when
/// blake3 reads it.
const PIECE: usize = 256 << 10;

thread_local! {
    /// Each rayon worker reuses one buffer (no allocation or page faults per leaf).
    static LEAF_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The parts of a file's stat that the memo keys on, plus what commit needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    /// The inode's change time. Unlike mtime it cannot be set back (`touch -d` sets it to
    /// now), so a file rewritten in place with its size and mtime restored still shows.
    pub ctime_ns: i64,
}

impl FileStat {
    pub(crate) fn of(md: &Metadata) -> Self {
        FileStat {
            size: md.len(),
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            ino: md.ino(),
            mode: md.mode(),
            nlink: md.nlink(),
            ctime_ns: md
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.ctime_nsec()),
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
        return Err(Error::UnsupportedFile {
            path: path.to_path_buf(),
            kind: "folder or special file (not a regular file)",
        });
    }
    let before = FileStat::of(&md);
    let (hash, read) = if before.size >= PARALLEL_MIN {
        hash_large(&file, before.size)
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

/// Hashes `size` bytes of `file` as blake3 subtrees in parallel: the tree is split the way
/// blake3 splits it (left subtree = largest power of two below the length), each leaf of at
/// most [`LEAF`] bytes is read with `pread` into a per-thread buffer and hashed on a rayon
/// worker, and the chaining values are merged back up (`blake3::hazmat`). So reading and
/// hashing both scale with cores, without mmap. Returns the root hash and the bytes read.
fn hash_large(file: &File, size: u64) -> io::Result<(blake3::Hash, u64)> {
    debug_assert!(
        size > blake3::CHUNK_LEN as u64,
        "the root merge needs two subtrees"
    );
    let left = left_subtree_len(size);
    let (l, r) = rayon::join(
        || subtree(file, 0, left),
        || subtree(file, left, size - left),
    );
    let ((lcv, lread), (rcv, rread)) = (l?, r?);
    Ok((merge_subtrees_root(&lcv, &rcv, Mode::Hash), lread + rread))
}

fn subtree(file: &File, offset: u64, len: u64) -> io::Result<(ChainingValue, u64)> {
    if len <= LEAF {
        return LEAF_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(PIECE, 0);
            // Ask the kernel for the whole leaf at once: with several workers reading at
            // distant offsets, the per-file readahead would otherwise lose track (cold files).
            // SAFETY: a valid descriptor; fadvise only schedules reads.
            unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    offset as i64,
                    len as i64,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
            let mut h = blake3::Hasher::new();
            h.set_input_offset(offset);
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(PIECE as u64) as usize;
                let n = read_at_full(file, &mut buf[..want], offset + done)?;
                h.update(&buf[..n]);
                done += n as u64;
                if n < want {
                    break;
                }
            }
            if done < len {
                // The file shrank under us: hash_path sees the short count and reports it
                // (an empty subtree cannot even be hashed, so do not try).
                return Ok(([0; 32], done));
            }
            Ok((h.finalize_non_root(), done))
        });
    }
    let left = left_subtree_len(len);
    let (l, r) = rayon::join(
        || subtree(file, offset, left),
        || subtree(file, offset + left, len - left),
    );
    let ((lcv, lread), (rcv, rread)) = (l?, r?);
    Ok((
        merge_subtrees_non_root(&lcv, &rcv, Mode::Hash),
        lread + rread,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_paths_agree_with_one_shot_blake3() {
        let dir = tempfile::tempdir().unwrap();
        // Sizes around the chunk and threshold edges.
        let leaf = LEAF as usize;
        for size in [
            0usize,
            1,
            1025,
            65_536,
            PARALLEL_MIN as usize,
            PARALLEL_MIN as usize + 1,
            3 * leaf + 1,
            4 * leaf,
            4 * leaf + 1025,
            5 * leaf - 7,
            9 * leaf + 12_345,
        ] {
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
        let err = hash_path(Path::new("/nonexistent/pollard/x.bin"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot open `/nonexistent/pollard/x.bin`"),
            "{err}"
        );
    }
}
