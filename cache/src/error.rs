//! The cache's error type: every failure names the path, digest or value it concerns.

use std::io;
use std::path::PathBuf;

use crate::digest::{ArtifactId, Digest};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One thing found wrong with a stored object, manifest or record (by `verify` and
/// `check_artifact`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// The file in the cache concerned.
    pub path: PathBuf,
    /// The digest the cache expected there (the name it is stored under).
    pub expected: Option<Digest>,
    /// The digest actually found (None when the file is missing or unreadable).
    pub actual: Option<Digest>,
    /// Extra words, e.g. the I/O error or the manifest that references a missing object.
    pub detail: String,
}

/// The kinds of [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An object's bytes do not hash to its name.
    CorruptObject,
    /// An object referenced by a manifest is absent.
    MissingObject,
    /// A manifest's bytes do not hash to its name, or do not parse.
    CorruptManifest,
    /// A run record does not parse.
    CorruptRecord,
    /// A run record names an artifact whose manifest is absent.
    MissingArtifact,
    /// A file in the cache could not be read.
    Unreadable,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ProblemKind::CorruptObject => "corrupt object",
            ProblemKind::MissingObject => "missing object",
            ProblemKind::CorruptManifest => "corrupt manifest",
            ProblemKind::CorruptRecord => "corrupt record",
            ProblemKind::MissingArtifact => "missing artifact",
            ProblemKind::Unreadable => "unreadable",
        };
        write!(f, "{kind} `{}`", self.path.display())?;
        if let Some(e) = &self.expected {
            write!(f, " expected {e}")?;
        }
        match &self.actual {
            Some(a) => write!(f, " found {a}")?,
            None if self.expected.is_some() => write!(f, " found nothing")?,
            None => {}
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything that can go wrong in the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed on a path.
    #[error("cannot {op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The device (or quota) is full. Whatever was being written was removed again.
    #[error("no space left on the device while trying to {op} `{path}`; nothing was half-written, free some space (e.g. `pollard gc`) and rerun")]
    NoSpace {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The cache folder cannot be created or written.
    #[error("the cache folder `{path}` is not writable ({source}); point POLLARD_CACHE_DIR at a writable folder")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A symlink inside a folder being committed points outside it.
    #[error("symlink `{link}` points to `{target}`, outside the folder `{root}` being committed; copy the file in instead")]
    SymlinkEscapes {
        link: PathBuf,
        target: PathBuf,
        root: PathBuf,
    },
    /// A folder being committed holds something that is not a regular file or folder.
    #[error("`{path}` is a {kind}; an artifact holds only regular files, folders and symlinks to files inside it")]
    UnsupportedFile { path: PathBuf, kind: &'static str },
    /// A path in a folder being committed is not valid UTF-8 (manifests store paths as text).
    #[error("the path `{path}` is not valid UTF-8; artifact file names must be")]
    NonUtf8Path { path: PathBuf },
    /// A file's size or modification time changed while it was being hashed.
    #[error(
        "`{path}` changed while it was being hashed ({detail}); rerun once nothing writes to it"
    )]
    ChangedWhileHashing { path: PathBuf, detail: String },
    /// An object's bytes do not match its digest.
    #[error("object `{path}` is corrupt: expected {expected}, found {actual}")]
    CorruptObject {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    /// An artifact manifest is unreadable or does not hash to its name.
    #[error("artifact manifest `{path}` is invalid: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    /// A run record does not parse.
    #[error("run record `{path}` is invalid: {source}")]
    BadRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// An artifact is not in the cache.
    #[error("artifact {id} is not in the cache at `{root}`")]
    MissingArtifact { id: ArtifactId, root: PathBuf },
    /// An artifact is present but some of its objects are missing or corrupt (they were moved
    /// to quarantine; recompute the artifact).
    #[error("artifact {id} is damaged: {}", list(.problems))]
    ArtifactDamaged {
        id: ArtifactId,
        problems: Vec<Problem>,
    },
    /// Text that should be a digest is not.
    #[error("invalid digest `{text}`: {reason} (expected `blake3:` and 64 lowercase hex digits)")]
    BadDigest { text: String, reason: &'static str },
    /// Text that should be a timestamp is not.
    #[error(
        "invalid timestamp `{text}`: expected RFC 3339 UTC such as `2026-01-31T12:00:00.000Z`"
    )]
    BadTimestamp { text: String },
    /// Another process holds a lock that this operation needs.
    #[error("the cache lock `{path}` is held by another process: {what}")]
    Busy { path: PathBuf, what: &'static str },
    /// `materialize` refuses to overwrite.
    #[error("`{path}` already exists; materialize writes only to a new path")]
    DestinationExists { path: PathBuf },
}

/// Builds the mapper of an `io::Error` on `path`: a full device becomes [`Error::NoSpace`].
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| {
        if is_no_space(&source) {
            Error::NoSpace { op, path, source }
        } else {
            Error::Io { op, path, source }
        }
    }
}

/// ENOSPC, or EDQUOT (a full quota looks the same to the user).
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
