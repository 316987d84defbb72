//! Artifacts: a committed folder. Commit hashes the staging folder's files (in parallel),
//! links them into the object store read-only (identical bytes stored once), and writes the
//! manifest, whose blake3 is the [`ArtifactId`]. The manifest is written last, so an
//! artifact exists exactly when its manifest does: a crash leaves only unreferenced objects
//! for gc, never a half artifact. Reading back re-checks objects through the stat memo.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::digest::{ArtifactId, CacheKey, Digest};
use crate::error::{io_err, Error, Problem, ProblemKind, Result};
use crate::fsutil::{
    clone_or_copy, copy_bytes, create_dirs, join_rel, remove_any, remove_tree, set_object_mtime,
    set_readonly, try_reflink, unique_name, write_atomic,
};
use crate::hash::{hash_path, FileStat};
use crate::staging::Staging;
use crate::Cache;

const MANIFEST_FORMAT: &str = "pollard-artifact/1";

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path, `/`-separated.
    pub path: String,
    pub size: u64,
    pub executable: bool,
    pub digest: Digest,
}

/// The canonical description of an artifact: its files sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// A manifest of `files` (sorted here, so the id does not depend on listing order).
    pub fn new(mut files: Vec<FileEntry>) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            format: MANIFEST_FORMAT.to_string(),
            files,
        }
    }

    /// The canonical bytes (compact JSON, fields in declaration order, files sorted).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest is plain strings, numbers and booleans")
    }

    /// The artifact id: blake3 of the canonical bytes.
    pub fn id(&self) -> ArtifactId {
        ArtifactId(Digest::of(&self.to_bytes()))
    }

    /// Sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Parses and validates stored manifest bytes: known format, paths sorted, unique and
    /// relative without `..` (a tampered manifest must not write outside a folder).
    pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest> {
        let bad = |reason: String| Error::BadManifest {
            path: path.to_path_buf(),
            reason,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "unknown format `{}` (expected `{MANIFEST_FORMAT}`)",
                m.format
            )));
        }
        for f in &m.files {
            let p = Path::new(&f.path);
            let safe = !f.path.is_empty()
                && !f.path.contains('\0')
                && p.components().all(|c| matches!(c, Component::Normal(_)))
                && !f.path.ends_with('/')
                && !f.path.contains("//");
            if !safe {
                return Err(bad(format!(
                    "file path `{}` is not a plain relative path",
                    f.path
                )));
            }
        }
        if m.files.windows(2).any(|w| w[0].path >= w[1].path) {
            return Err(bad("file paths are not sorted and unique".to_string()));
        }
        Ok(m)
    }
}

/// A committed artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub id: ArtifactId,
    pub manifest: Manifest,
}

impl Artifact {
    pub fn files(&self) -> &[FileEntry] {
        &self.manifest.files
    }

    pub fn total_size(&self) -> u64 {
        self.manifest.total_size()
    }
}

/// The state of an artifact's stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Manifest and every object are present and hash to their names.
    Ok,
    /// No manifest: never committed (or collected).
    Missing,
    /// Present but damaged; treat as missing and recompute. Corrupt objects and manifests
    /// were moved to quarantine, so the recompute stores fresh bytes.
    Damaged(Vec<Problem>),
}

/// What `materialize` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Materialized {
    pub files: usize,
    pub reflinked: usize,
    pub hardlinked: usize,
    pub copied: usize,
}

/// A file found in a folder being committed or hashed.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub rel: String,
    /// The file to read (a symlink's resolved target).
    pub source: PathBuf,
    pub via_symlink: bool,
}

fn lexically_normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Lists the regular files under `root` (sorted by relative path), following symlinks that
/// stay inside it and refusing those that leave it.
pub(crate) fn scan(root: &Path) -> Result<Vec<Scanned>> {
    let root_abs = std::path::absolute(root).map_err(io_err("resolve", root))?;
    let root_real = fs::canonicalize(&root_abs).map_err(io_err("resolve", &root_abs))?;
    let mut out = Vec::new();
    walk(&root_abs, &root_real, &root_abs, "", &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(
    root: &Path,
    root_real: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<Scanned>,
) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in rd {
        let entry = entry.map_err(io_err("list", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::NonUtf8Path { path });
        };
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let ft = entry.file_type().map_err(io_err("stat", &path))?;
        if ft.is_dir() {
            walk(root, root_real, &path, &rel, out)?;
        } else if ft.is_file() {
            out.push(Scanned {
                rel,
                source: path,
                via_symlink: false,
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read symlink", &path))?;
            let escapes = |target: PathBuf| Error::SymlinkEscapes {
                link: path.clone(),
                target,
                root: root.to_path_buf(),
            };
            let resolved = match fs::canonicalize(&path) {
                Ok(r) => r,
                Err(e) => {
                    let lexical = lexically_normal(&path.parent().unwrap_or(root).join(&target));
                    if !lexical.starts_with(root) {
                        return Err(escapes(target));
                    }
                    return Err(io_err("follow symlink (dangling?)", &path)(e));
                }
            };
            if !resolved.starts_with(root_real) {
                return Err(escapes(target));
            }
            let md = fs::metadata(&resolved).map_err(io_err("stat", &resolved))?;
            if md.is_dir() {
                return Err(Error::UnsupportedFile {
                    path,
                    kind: "symlink to a folder",
                });
            } else if !md.is_file() {
                return Err(Error::UnsupportedFile {
                    path,
                    kind: "symlink to a special file",
                });
            }
            out.push(Scanned {
                rel,
                source: resolved,
                via_symlink: true,
            });
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_fifo() {
                "named pipe"
            } else if ft.is_socket() {
                "socket"
            } else {
                "device file"
            };
            return Err(Error::UnsupportedFile { path, kind });
        }
    }
    Ok(())
}

/// The state of one stored object.
enum ObjectState {
    /// Present and correct; its inode.
    Good(u64),
    Missing,
    Corrupt(Digest),
}

impl Cache {
    /// Commits a staging folder as an artifact (see the module docs). Refuses symlinks that
    /// escape the folder, special files and non-UTF-8 names, naming the path; on any error the
    /// store is unchanged apart from unreferenced objects (collected by gc).
    pub fn commit(&self, staging: Staging) -> Result<ArtifactId> {
        let scanned = scan(staging.path())?;
        let hashed: Vec<(Scanned, Digest, FileStat)> = scanned
            .into_par_iter()
            .map(|s| {
                let (d, st) = hash_path(&s.source)?;
                Ok((s, d, st))
            })
            .collect::<Result<_>>()?;
        hashed
            .par_iter()
            .try_for_each(|(s, d, st)| self.store_object(s, d, st))?;
        let manifest = Manifest::new(
            hashed
                .iter()
                .map(|(s, d, st)| FileEntry {
                    path: s.rel.clone(),
                    size: st.size,
                    executable: st.executable(),
                    digest: *d,
                })
                .collect(),
        );
        let id = manifest.id();
        self.write_manifest(&id, &manifest)?;
        drop(staging);
        Ok(id)
    }

    /// Commits a copy of an existing folder (reflinked where the filesystem can). The folder
    /// itself is left untouched.
    pub fn commit_dir(&self, dir: &Path) -> Result<ArtifactId> {
        let scanned = scan(dir)?;
        let staging = self.staging()?;
        for s in &scanned {
            let dst = join_rel(staging.path(), &s.rel);
            if let Some(parent) = dst.parent() {
                create_dirs(parent)?;
            }
            clone_or_copy(&s.source, &dst, &self.budget)?;
            let exec = fs::metadata(&s.source)
                .map_err(io_err("stat", &s.source))?
                .mode()
                & 0o111
                != 0;
            let mode = if exec { 0o755 } else { 0o644 };
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
                .map_err(io_err("set mode of", &dst))?;
        }
        self.commit(staging)
    }

    /// The manifest of a folder as committing it would write (for `hash_tree`).
    pub(crate) fn manifest_of_folder(&self, dir: &Path) -> Result<Manifest> {
        let scanned = scan(dir)?;
        let files = scanned
            .par_iter()
            .map(|s| {
                let (digest, st) = self.hash_file_stat(&s.source)?;
                Ok(FileEntry {
                    path: s.rel.clone(),
                    size: st.size,
                    executable: st.executable(),
                    digest,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest::new(files))
    }

    fn store_object(&self, s: &Scanned, d: &Digest, st: &FileStat) -> Result<()> {
        let obj = self.layout.object_path(d);
        match self.object_state(&obj, d)? {
            ObjectState::Good(_) => return Ok(()),
            ObjectState::Missing => {}
            ObjectState::Corrupt(_) => self.quarantine(&obj)?,
        }
        let shard = obj.parent().expect("object paths have a shard folder");
        create_dirs(shard)?;
        // A file we alone hold is linked in place (no copy). A file with other links or
        // reached through a symlink is copied: it may alias something outside the store
        // (making it read-only would change that too), so it is re-hashed after the copy.
        let owned = !s.via_symlink && st.nlink == 1;
        let tmp;
        let src = if owned {
            &s.source
        } else {
            tmp = self.layout.tmp_dir().join(unique_name("object"));
            clone_or_copy(&s.source, &tmp, &self.budget)?;
            match hash_path(&tmp) {
                Ok((again, _)) if again == *d => {}
                Ok((again, _)) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(Error::ChangedWhileHashing {
                        path: s.source.clone(),
                        detail: format!("hashed {d}, copied bytes hash to {again}"),
                    });
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            &tmp
        };
        let linked = (|| -> Result<()> {
            set_object_mtime(src)?;
            set_readonly(src, false)?;
            match fs::hard_link(src, &obj) {
                Ok(()) => Ok(()),
                // Another thread or process stored the same bytes first: the same object.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(io_err("store object", &obj)(e)),
            }
        })();
        if !owned {
            let _ = fs::remove_file(src);
        }
        linked?;
        if let Ok(md) = fs::metadata(&obj) {
            let stored = FileStat::of(&md);
            // Memoise only what we can vouch for: the object has the size we hashed and the
            // fixed object mtime (i.e. nobody wrote to it since).
            if stored.size == st.size
                && stored.mtime_ns == crate::fsutil::OBJECT_MTIME.as_nanos() as i64
            {
                self.memo.insert(obj, &stored, *d);
            }
        }
        Ok(())
    }

    /// Checks a stored object through the stat memo; re-hashes when its stat changed.
    fn object_state(&self, obj: &Path, expected: &Digest) -> Result<ObjectState> {
        let md = match fs::metadata(obj) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ObjectState::Missing),
            Err(e) => return Err(io_err("stat", obj)(e)),
        };
        let st = FileStat::of(&md);
        if self.memo.lookup(obj, &st) == Some(*expected) {
            return Ok(ObjectState::Good(st.ino));
        }
        match hash_path(obj) {
            Ok((actual, st)) if actual == *expected => {
                self.memo.insert(obj.to_path_buf(), &st, actual);
                Ok(ObjectState::Good(st.ino))
            }
            Ok((actual, _)) => Ok(ObjectState::Corrupt(actual)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(ObjectState::Missing)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves a bad object or manifest out of the way (gc deletes quarantine).
    fn quarantine(&self, path: &Path) -> Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let dest = self.layout.quarantine_dir().join(unique_name(name));
        match fs::rename(path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("move to quarantine", path)(e)),
        }
        self.memo.remove(path);
        Ok(())
    }

    fn write_manifest(&self, id: &ArtifactId, manifest: &Manifest) -> Result<()> {
        let path = self.layout.manifest_path(id);
        let bytes = manifest.to_bytes();
        match fs::read(&path) {
            Ok(existing) if existing == bytes => return Ok(()),
            _ => {}
        }
        write_atomic(&self.layout.tmp_dir(), &path, &bytes, true, &self.budget)
    }

    /// The artifact `id` with its manifest; `None` when it is not in the cache. A manifest
    /// that does not parse or hash to its name is an error naming its path.
    pub fn artifact(&self, id: &ArtifactId) -> Result<Option<Artifact>> {
        let path = self.layout.manifest_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let actual = Digest::of(&bytes);
        if actual != id.0 {
            return Err(Error::BadManifest {
                path,
                reason: format!("its bytes hash to {actual}, not {id}"),
            });
        }
        let manifest = Manifest::parse(&path, &bytes)?;
        Ok(Some(Artifact { id: *id, manifest }))
    }

    /// The files whose presence vouches for the result cached under `key`: its run record, its
    /// artifact's manifest and that artifact's objects. A caller that keeps their stats (the
    /// engine's no-op memo) can later tell with a `stat` each that none was removed or
    /// rewritten, without reading them. `None` when the artifact is not in the cache.
    pub fn footprint(&self, key: &CacheKey, id: &ArtifactId) -> Result<Option<Vec<PathBuf>>> {
        let Some(art) = self.artifact(id)? else {
            return Ok(None);
        };
        let mut paths = vec![self.layout.record_path(key), self.layout.manifest_path(id)];
        let digests: std::collections::BTreeSet<Digest> =
            art.files().iter().map(|f| f.digest).collect();
        paths.extend(digests.iter().map(|d| self.layout.object_path(d)));
        Ok(Some(paths))
    }

    /// Checks that the artifact's manifest and objects are intact, through the stat memo (a
    /// `stat` per object when nothing changed). Damaged objects and manifests are moved to
    /// quarantine and the artifact's folder is removed, so the artifact reads as missing and
    /// a recompute stores fresh bytes.
    pub fn check_artifact(&self, id: &ArtifactId) -> Result<Health> {
        Ok(self.check(id)?.0)
    }

    fn check(&self, id: &ArtifactId) -> Result<(Health, Option<Artifact>, HashMap<Digest, u64>)> {
        let art = match self.artifact(id) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok((Health::Missing, None, HashMap::new())),
            Err(Error::BadManifest { path, reason }) => {
                self.quarantine(&path)?;
                let _ = remove_tree(&self.layout.tree_path(id));
                let p = Problem {
                    kind: ProblemKind::CorruptManifest,
                    path,
                    expected: Some(id.0),
                    actual: None,
                    detail: reason,
                };
                return Ok((Health::Damaged(vec![p]), None, HashMap::new()));
            }
            Err(e) => return Err(e),
        };
        let digests: Vec<Digest> = art
            .files()
            .iter()
            .map(|f| f.digest)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let states = digests
            .par_iter()
            .map(|d| {
                let obj = self.layout.object_path(d);
                let state = self.object_state(&obj, d)?;
                Ok((*d, obj, state))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut inodes = HashMap::new();
        let mut problems = Vec::new();
        for (d, obj, state) in states {
            match state {
                ObjectState::Good(ino) => {
                    inodes.insert(d, ino);
                }
                ObjectState::Missing => problems.push(Problem {
                    kind: ProblemKind::MissingObject,
                    path: obj,
                    expected: Some(d),
                    actual: None,
                    detail: format!("referenced by artifact {id}"),
                }),
                ObjectState::Corrupt(actual) => {
                    self.quarantine(&obj)?;
                    problems.push(Problem {
                        kind: ProblemKind::CorruptObject,
                        path: obj,
                        expected: Some(d),
                        actual: Some(actual),
                        detail: format!("referenced by artifact {id}; moved to quarantine"),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok((Health::Ok, Some(art), inodes))
        } else {
            let _ = remove_tree(&self.layout.tree_path(id));
            Ok((Health::Damaged(problems), Some(art), inodes))
        }
    }

    /// The artifact, or an error when it is missing or damaged.
    fn healthy(&self, id: &ArtifactId) -> Result<(Artifact, HashMap<Digest, u64>)> {
        match self.check(id)? {
            (Health::Ok, Some(art), inodes) => Ok((art, inodes)),
            (Health::Damaged(problems), _, _) => Err(Error::ArtifactDamaged { id: *id, problems }),
            _ => Err(Error::MissingArtifact {
                id: *id,
                root: self.root().to_path_buf(),
            }),
        }
    }

    /// A read-only folder holding the artifact's files (hardlinks to the objects, under
    /// `v1/artifacts/<id>/`), for a stage to read as input. Checked on every call: the objects
    /// through the stat memo, the folder's links against the objects' inodes (rebuilt when
    /// they differ).
    pub fn artifact_dir(&self, id: &ArtifactId) -> Result<PathBuf> {
        let (art, inodes) = self.healthy(id)?;
        let tree = self.layout.tree_path(id);
        if self.tree_matches(&tree, &art, &inodes)? {
            return Ok(tree);
        }
        let tmp = self.layout.tmp_dir().join(unique_name("tree"));
        if let Err(e) = self.build_tree(&tmp, &art) {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        self.publish_tree(&tmp, &tree, &art, &inodes)?;
        let _ = fs::set_permissions(&tree, fs::Permissions::from_mode(0o555));
        Ok(tree)
    }

    /// Renames the built folder `tmp` into place at `tree`. Other threads and processes may be
    /// publishing the same folder at once, so a failed rename is judged by what is at `tree`
    /// now: a folder that matches is theirs, and ours is dropped; one that does not is stale
    /// (its objects were replaced since) and is moved aside before trying again; nothing there
    /// means another publisher moved a stale one aside in between, so try again. A folder is
    /// moved aside only after it was read and found not to match (before, any folder there was
    /// moved aside unread, so racing publishers moved each other's fresh folders away), and
    /// the attempts are bounded.
    fn publish_tree(
        &self,
        tmp: &Path,
        tree: &Path,
        art: &Artifact,
        inodes: &HashMap<Digest, u64>,
    ) -> Result<()> {
        const ATTEMPTS: usize = 16;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failed = match fs::rename(tmp, tree) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if fs::symlink_metadata(tree).is_ok() {
                let matches = self.tree_matches(tree, art, inodes);
                if !matches!(matches, Ok(false)) {
                    // Theirs is good (ours is not needed), or reading it failed: ours goes.
                    let _ = remove_tree(tmp);
                    return matches.map(|_| ());
                }
                let old = self.layout.tmp_dir().join(unique_name("old-tree"));
                if fs::rename(tree, &old).is_ok() {
                    let _ = remove_tree(&old);
                }
            }
            if attempt == ATTEMPTS {
                let _ = remove_tree(tmp);
                return Err(io_err("publish artifact folder", tree)(failed));
            }
        }
    }

    fn build_tree(&self, dir: &Path, art: &Artifact) -> Result<()> {
        fs::create_dir(dir).map_err(io_err("create folder", dir))?;
        let mut subdirs = std::collections::BTreeSet::new();
        for f in art.files() {
            let obj = self.layout.object_path(&f.digest);
            let dst = join_rel(dir, &f.path);
            if let Some(parent) = dst.parent() {
                if parent != dir {
                    create_dirs(parent)?;
                    subdirs.insert(parent.to_path_buf());
                }
            }
            // Executable files get their own copy: the shared object is stored 0444.
            let linked = !f.executable && fs::hard_link(&obj, &dst).is_ok();
            if linked {
                self.memo.relinked(&obj);
            } else {
                clone_or_copy(&obj, &dst, &self.budget)?;
                set_readonly(&dst, f.executable)?;
            }
        }
        // Deepest first, so a parent is still writable while its children change.
        for sub in subdirs.iter().rev() {
            let _ = fs::set_permissions(sub, fs::Permissions::from_mode(0o555));
        }
        Ok(())
    }

    fn tree_matches(
        &self,
        tree: &Path,
        art: &Artifact,
        inodes: &HashMap<Digest, u64>,
    ) -> Result<bool> {
        if !tree.is_dir() {
            return Ok(false);
        }
        let Ok(present) = scan(tree) else {
            return Ok(false);
        };
        if present.len() != art.files().len() || present.iter().any(|s| s.via_symlink) {
            return Ok(false);
        }
        for f in art.files() {
            let p = join_rel(tree, &f.path);
            let Ok(md) = fs::symlink_metadata(&p) else {
                return Ok(false);
            };
            if !md.is_file() || md.len() != f.size {
                return Ok(false);
            }
            let ok = if f.executable {
                matches!(self.hash_file(&p), Ok(d) if d == f.digest)
            } else {
                inodes.get(&f.digest) == Some(&md.ino())
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes the artifact's files at `dest` (which must not exist): reflink where the
    /// filesystem can, else hardlink, else copy; files read-only. Built beside `dest` and
    /// renamed into place, so `dest` appears complete or not at all.
    pub fn materialize(&self, id: &ArtifactId, dest: &Path) -> Result<Materialized> {
        if fs::symlink_metadata(dest).is_ok() {
            return Err(Error::DestinationExists {
                path: dest.to_path_buf(),
            });
        }
        let (art, _) = self.healthy(id)?;
        let dest = std::path::absolute(dest).map_err(io_err("resolve", dest))?;
        let parent = dest
            .parent()
            .ok_or_else(|| Error::DestinationExists { path: dest.clone() })?;
        create_dirs(parent)?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact");
        let tmp = parent.join(format!(".{name}.{}", unique_name("pollard")));
        let result = (|| -> Result<Materialized> {
            fs::create_dir(&tmp).map_err(io_err("create folder", &tmp))?;
            let mut done = Materialized::default();
            for f in art.files() {
                let obj = self.layout.object_path(&f.digest);
                let dst = join_rel(&tmp, &f.path);
                if let Some(p) = dst.parent() {
                    create_dirs(p)?;
                }
                if try_reflink(&obj, &dst) {
                    set_readonly(&dst, f.executable)?;
                    done.reflinked += 1;
                } else if !f.executable && fs::hard_link(&obj, &dst).is_ok() {
                    self.memo.relinked(&obj);
                    done.hardlinked += 1;
                } else {
                    copy_bytes(&obj, &dst, &self.budget)?;
                    set_readonly(&dst, f.executable)?;
                    done.copied += 1;
                }
                done.files += 1;
            }
            fs::rename(&tmp, &dest).map_err(|e| {
                if fs::symlink_metadata(&dest).is_ok() {
                    Error::DestinationExists { path: dest.clone() }
                } else {
                    io_err("rename into place", &dest)(e)
                }
            })?;
            Ok(done)
        })();
        if result.is_err() {
            let _ = remove_tree(&tmp);
        }
        result
    }

    /// Manifests (ids) present in the store, with the objects each references; for gc.
    pub(crate) fn manifest_files(&self) -> Result<Vec<(PathBuf, Option<ArtifactId>)>> {
        let dir = self.layout.manifests_dir();
        let files = crate::layout::sharded_files(&dir).map_err(io_err("list", &dir))?;
        Ok(files
            .into_iter()
            .map(|p| {
                let id = crate::layout::digest_of_sharded(&p, ".json").map(ArtifactId);
                (p, id)
            })
            .collect())
    }

    /// Removes an artifact's manifest and folder; returns bytes freed.
    pub(crate) fn remove_artifact_files(
        &self,
        manifest: &Path,
        id: Option<&ArtifactId>,
    ) -> Result<u64> {
        let mut freed = remove_any(manifest).map_err(io_err("remove", manifest))?;
        if let Some(id) = id {
            let tree = self.layout.tree_path(id);
            freed += remove_any(&tree).map_err(io_err("remove", &tree))?;
        }
        Ok(freed)
    }

    /// The digest and stat of a file through the memo.
    pub(crate) fn hash_file_stat(&self, path: &Path) -> Result<(Digest, FileStat)> {
        let abs = std::path::absolute(path).map_err(io_err("resolve", path))?;
        let md = fs::metadata(&abs).map_err(io_err("stat", &abs))?;
        if !md.is_file() {
            return Err(Error::UnsupportedFile {
                path: abs,
                kind: if md.is_dir() {
                    "folder (use hash_tree)"
                } else {
                    "special file"
                },
            });
        }
        let st = FileStat::of(&md);
        if let Some(d) = self.memo.lookup(&abs, &st) {
            return Ok((d, st));
        }
        let (d, st) = hash_path(&abs)?;
        self.memo.insert(abs, &st, d);
        Ok((d, st))
    }
}
