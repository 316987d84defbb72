//! Tests of the cache as a whole: commit and read back, dedup, faults (damaged objects, files
//! changing while hashed, full disk, unwritable folder, escaping symlinks), concurrency
//! across threads and processes, locks of dead processes, records, gc and verify.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use crate::testutil::*;
use crate::*;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn cache_is_send_and_sync() {
    assert_send_sync::<Cache>();
}

#[test]
fn opening_creates_the_layout_under_v1() {
    let t = TestCache::new();
    for sub in [
        "objects",
        "manifests",
        "artifacts",
        "records",
        "locks/keys",
        "memo",
        "tmp",
        "quarantine",
    ] {
        assert!(t.root().join("v1").join(sub).is_dir(), "{sub}");
    }
    assert_eq!(t.cache.root(), t.root());
}

#[test]
fn default_root_honours_the_environment() {
    // The only test that touches this variable.
    std::env::remove_var(CACHE_DIR_ENV);
    assert_eq!(
        Cache::default_root(Path::new("/r")),
        PathBuf::from("/r/.pollard/cache")
    );
    std::env::set_var(CACHE_DIR_ENV, "/shared/cache");
    assert_eq!(
        Cache::default_root(Path::new("/r")),
        PathBuf::from("/shared/cache")
    );
    std::env::set_var(CACHE_DIR_ENV, "");
    assert_eq!(
        Cache::default_root(Path::new("/r")),
        PathBuf::from("/r/.pollard/cache")
    );
    std::env::remove_var(CACHE_DIR_ENV);
}

#[test]
fn commit_reads_back_the_same_files_read_only() {
    let t = TestCache::new();
    let staging = t.cache.staging().unwrap();
    let sp = staging.path().to_path_buf();
    assert!(
        sp.starts_with(t.root()),
        "staging must be on the cache's filesystem"
    );
    write_tree(
        &sp,
        &[
            ("model/weights.bin", &[7u8; 5000][..]),
            ("config.json", b"{}"),
            ("run.sh", b"#!/bin/sh\n"),
        ],
    );
    fs::set_permissions(sp.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let id = t.cache.commit(staging).unwrap();
    assert!(!sp.exists(), "the staging folder is gone after commit");

    let art = t.cache.artifact(&id).unwrap().expect("committed");
    let paths: Vec<&str> = art.files().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["config.json", "model/weights.bin", "run.sh"]);
    assert_eq!(art.total_size(), 5000 + 2 + 10);
    assert_eq!(art.files()[1].digest, Digest::of(&[7u8; 5000]));
    assert!(art.files()[2].executable && !art.files()[0].executable);
    assert_eq!(art.manifest.id(), id);

    let dir = t.cache.artifact_dir(&id).unwrap();
    assert_eq!(
        fs::read(dir.join("model/weights.bin")).unwrap(),
        vec![7u8; 5000]
    );
    assert_eq!(fs::read(dir.join("config.json")).unwrap(), b"{}");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("config.json")), 0o444);
    assert_eq!(mode(&dir.join("run.sh")), 0o555);
    // Non-executable files are hardlinks of the objects: no second copy of the bytes.
    let obj = t
        .root()
        .join("v1/objects")
        .join(&Digest::of(b"{}").to_hex()[..2])
        .join(&Digest::of(b"{}").to_hex()[2..]);
    assert_eq!(
        fs::metadata(&obj).unwrap().ino(),
        fs::metadata(dir.join("config.json")).unwrap().ino()
    );
    assert_eq!(mode(&obj), 0o444);
    // A second call finds the folder intact and returns it.
    assert_eq!(t.cache.artifact_dir(&id).unwrap(), dir);
    assert_eq!(t.cache.check_artifact(&id).unwrap(), Health::Ok);
}

#[test]
fn ids_are_pinned_and_independent_of_where_and_when() {
    // Golden id: changing the manifest format changes every key downstream, so it must be
    // deliberate (bump the format string and this value together).
    let t = TestCache::new();
    let id = t.commit_files(&[("a.txt", b"hello"), ("b/c.bin", b"")]);
    assert_eq!(
        id.to_string(),
        Manifest::new(vec![
            FileEntry {
                path: "b/c.bin".into(),
                size: 0,
                executable: false,
                digest: Digest::of(b"")
            },
            FileEntry {
                path: "a.txt".into(),
                size: 5,
                executable: false,
                digest: Digest::of(b"hello")
            },
        ])
        .id()
        .to_string()
    );
    let bytes = t.cache.artifact(&id).unwrap().unwrap().manifest.to_bytes();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        format!(
            "{{\"format\":\"pollard-artifact/1\",\"files\":[{{\"path\":\"a.txt\",\"size\":5,\"executable\":false,\"digest\":\"{}\"}},{{\"path\":\"b/c.bin\",\"size\":0,\"executable\":false,\"digest\":\"{}\"}}]}}",
            Digest::of(b"hello"),
            Digest::of(b"")
        )
    );
    let other = TestCache::new();
    assert_eq!(
        other.commit_files(&[("b/c.bin", b""), ("a.txt", b"hello")]),
        id
    );
}

#[test]
fn identical_bytes_are_stored_once() {
    let t = TestCache::new();
    let a = t.commit_files(&[("x", b"same bytes"), ("y", b"same bytes"), ("z", b"other")]);
    let b = t.commit_files(&[("renamed", b"same bytes")]);
    let again = t.commit_files(&[("x", b"same bytes"), ("y", b"same bytes"), ("z", b"other")]);
    assert_eq!(a, again);
    assert_ne!(a, b);
    assert_eq!(t.count("objects"), 2);
    assert_eq!(t.count("manifests"), 2);
    assert_eq!(t.count("tmp"), 0, "no staging leftovers");
}

#[test]
fn an_uncommitted_staging_folder_is_removed_on_drop() {
    let t = TestCache::new();
    let staging = t.cache.staging().unwrap();
    write_tree(staging.path(), &[("half/written.bin", b"partial")]);
    let p = staging.path().to_path_buf();
    drop(staging);
    assert!(!p.exists());
    assert_eq!(t.count("objects"), 0);
}

#[test]
fn hash_tree_of_a_folder_is_the_id_commit_gives() {
    let t = TestCache::new();
    let src = t.dir.path().join("src");
    write_tree(&src, &[("a", b"1"), ("d/b", b"22")]);
    let h = t.cache.hash_tree(&src).unwrap();
    let id = t.cache.commit_dir(&src).unwrap();
    assert_eq!(h, id.0);
    assert_eq!(
        fs::read(src.join("d/b")).unwrap(),
        b"22",
        "commit_dir leaves the source"
    );
    assert!(fs::metadata(src.join("a")).unwrap().permissions().mode() & 0o200 != 0);
    assert_eq!(t.cache.hash_tree(&src.join("a")).unwrap(), Digest::of(b"1"));
    let err = t
        .cache
        .hash_tree(&t.dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn hash_file_uses_the_memo_and_notices_changes() {
    let t = TestCache::new();
    let f = t.dir.path().join("dep.txt");
    fs::write(&f, b"version 1").unwrap();
    // Back-date the file so its memo entry is not "racy" (see memo.rs).
    let old = SystemTime::now() - Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(t.cache.hash_file(&f).unwrap(), Digest::of(b"version 1"));
    t.cache.flush().unwrap();
    let reopened = Cache::open(&t.root()).unwrap();
    assert!(reopened.memo_len() >= 1, "the memo persisted");
    assert_eq!(reopened.hash_file(&f).unwrap(), Digest::of(b"version 1"));
    // Same size, new content: the mtime moves, so the memo misses and we re-hash.
    fs::write(&f, b"version 2").unwrap();
    assert_eq!(reopened.hash_file(&f).unwrap(), Digest::of(b"version 2"));
    // A forger who swaps the bytes and restores size and mtime is still seen: the ctime
    // moved, and it cannot be set back.
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(reopened.hash_file(&f).unwrap(), Digest::of(b"version 2"));
    fs::write(&f, b"version 3").unwrap();
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(
        reopened.hash_file(&f).unwrap(),
        Digest::of(b"version 3"),
        "an in-place rewrite with the mtime set back is noticed through the ctime"
    );
    let err = reopened.hash_file(t.dir.path()).unwrap_err().to_string();
    assert!(err.contains("use hash_tree"), "{err}");
}

fn object_path(t: &TestCache, d: &Digest) -> PathBuf {
    let hex = d.to_hex();
    t.root().join("v1/objects").join(&hex[..2]).join(&hex[2..])
}

#[test]
fn a_truncated_object_is_reported_and_the_artifact_treated_as_missing() {
    let t = TestCache::new();
    let data = vec![42u8; 100_000];
    let id = t.commit_files(&[("w.bin", &data)]);
    t.cache.artifact_dir(&id).unwrap();
    let obj = object_path(&t, &Digest::of(&data));
    make_writable(&obj);
    fs::OpenOptions::new()
        .write(true)
        .open(&obj)
        .unwrap()
        .set_len(1000)
        .unwrap();

    let Health::Damaged(problems) = t.cache.check_artifact(&id).unwrap() else {
        panic!("not detected")
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::CorruptObject);
    assert_eq!(problems[0].path, obj);
    assert_eq!(problems[0].expected, Some(Digest::of(&data)));
    assert_eq!(problems[0].actual, Some(Digest::of(&data[..1000])));
    let shown = problems[0].to_string();
    assert!(
        shown.contains(&obj.display().to_string())
            && shown.contains(&Digest::of(&data).to_string()),
        "{shown}"
    );
    // The bad object went to quarantine and the folder was dropped: now it is missing.
    assert!(!t.root().join("v1/artifacts").join(id.0.to_hex()).exists());
    let err = t.cache.artifact_dir(&id).unwrap_err();
    assert!(matches!(err, Error::ArtifactDamaged { .. }), "{err}");
    assert!(err.to_string().contains("missing object"), "{err}");
    // Recomputing stores fresh bytes and the artifact is whole again.
    assert_eq!(t.commit_files(&[("w.bin", &data)]), id);
    assert_eq!(t.cache.check_artifact(&id).unwrap(), Health::Ok);
    assert_eq!(
        fs::read(t.cache.artifact_dir(&id).unwrap().join("w.bin")).unwrap(),
        data
    );
}

#[test]
fn a_modified_object_of_the_same_size_is_caught() {
    let t = TestCache::new();
    let id = t.commit_files(&[("a", b"good bytes")]);
    let obj = object_path(&t, &Digest::of(b"good bytes"));
    make_writable(&obj);
    fs::write(&obj, b"evil bytes").unwrap();
    let Health::Damaged(p) = t.cache.check_artifact(&id).unwrap() else {
        panic!("not detected")
    };
    assert_eq!(p[0].actual, Some(Digest::of(b"evil bytes")));
}

#[test]
fn verify_catches_what_the_stat_memo_cannot() {
    let t = TestCache::new();
    let id = t.commit_files(&[("a", b"good bytes")]);
    assert_eq!(t.cache.check_artifact(&id).unwrap(), Health::Ok);
    let obj = object_path(&t, &Digest::of(b"good bytes"));
    // Forge: same size, mtime restored to the object mtime; only a full re-hash sees it.
    make_writable(&obj);
    fs::write(&obj, b"evil bytes").unwrap();
    fs::File::open(&obj)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        .unwrap();
    let report = t.cache.verify().unwrap();
    assert_eq!(report.objects_checked, 1);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].kind, ProblemKind::CorruptObject);
    assert_eq!(report.problems[0].path, obj);
    assert!(!report.is_ok());
}

#[test]
fn verify_lists_corrupt_manifests_missing_objects_and_dangling_records() {
    let t = TestCache::new();
    let a = t.commit_files(&[("a", b"aaa")]);
    let b = t.commit_files(&[("b", b"bbb")]);
    assert!(t.cache.verify().unwrap().is_ok());
    // a: its object vanishes; b: its manifest is rewritten; a record names a lost artifact.
    fs::remove_file(object_path(&t, &Digest::of(b"aaa"))).unwrap();
    let bm = t
        .root()
        .join("v1/manifests")
        .join(&b.0.to_hex()[..2])
        .join(format!("{}.json", &b.0.to_hex()[2..]));
    fs::write(&bm, b"{\"format\":\"pollard-artifact/1\",\"files\":[]}").unwrap();
    let lost = ArtifactId(Digest::of(b"never committed"));
    t.cache
        .put_record(&record(CacheKey::of(b"k"), lost))
        .unwrap();
    let report = t.cache.verify().unwrap();
    let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(report.problems.len(), 3, "{:#?}", report.problems);
    assert!(kinds.contains(&ProblemKind::MissingObject));
    assert!(kinds.contains(&ProblemKind::CorruptManifest));
    assert!(kinds.contains(&ProblemKind::MissingArtifact));
    let missing = report
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::MissingObject)
        .unwrap();
    assert_eq!(missing.expected, Some(Digest::of(b"aaa")));
    assert!(missing.detail.contains(&a.to_string()));
    let bad = report
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::CorruptManifest)
        .unwrap();
    assert_eq!(bad.path, bm);
}

#[test]
fn a_file_that_changes_while_hashed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestCache::new();
    let f = dir.path().join("growing.bin");
    fs::write(&f, vec![1u8; 64 << 20]).unwrap();
    let mut caught = None;
    // A writer appends without pause while we hash; each try is one 64 MiB hash.
    for _ in 0..10 {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Barrier::new(2));
        let writer = {
            let (f, stop, started) = (f.clone(), stop.clone(), started.clone());
            std::thread::spawn(move || {
                let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
                h.write_all(&[2u8; 4096]).unwrap();
                started.wait();
                while !stop.load(Ordering::Relaxed) {
                    h.write_all(&[2u8; 4096]).unwrap();
                }
            })
        };
        started.wait();
        let r = t.cache.hash_file(&f);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        if let Err(e) = r {
            caught = Some(e);
            break;
        }
    }
    let err = caught.expect("a growing file was never noticed");
    assert!(matches!(err, Error::ChangedWhileHashing { .. }), "{err}");
    assert!(err.to_string().contains(&f.display().to_string()), "{err}");
}

#[test]
fn a_file_truncated_while_hashed_is_refused_not_a_crash() {
    // With mmap this would be SIGBUS; we read, so it is an error naming the file.
    let dir = tempfile::tempdir().unwrap();
    let t = TestCache::new();
    let f = dir.path().join("shrinking.bin");
    let mut caught = None;
    for _ in 0..10 {
        fs::write(&f, vec![1u8; 256 << 20]).unwrap();
        let started = Arc::new(Barrier::new(2));
        let cutter = {
            let (f, started) = (f.clone(), started.clone());
            std::thread::spawn(move || {
                started.wait();
                std::thread::sleep(Duration::from_millis(5));
                fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(4096)
                    .unwrap();
            })
        };
        started.wait();
        let r = t.cache.hash_file(&f);
        cutter.join().unwrap();
        if let Err(e) = r {
            caught = Some(e);
            break;
        }
    }
    let err = caught.expect("truncation was never noticed");
    assert!(matches!(err, Error::ChangedWhileHashing { .. }), "{err}");
}

fn assert_consistent_after_failure(t: &TestCache) {
    assert_eq!(t.count("tmp"), 0, "temp files left behind");
    assert_eq!(t.count("manifests"), 0, "a manifest was written");
    let report = t.cache.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn a_full_disk_while_copying_a_folder_in_leaves_nothing_half_written() {
    let mut t = TestCache::new();
    let src = t.dir.path().join("big");
    write_tree(
        &src,
        &[
            ("a.bin", &[1u8; 100_000][..]),
            ("b.bin", &[2u8; 100_000][..]),
            ("c.bin", &[3u8; 100_000][..]),
        ],
    );
    t.cache.simulate_space_limit(150_000);
    let err = t.cache.commit_dir(&src).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert!(
        err.to_string().contains("b.bin"),
        "names the file being written: {err}"
    );
    assert_consistent_after_failure(&t);
    // The next run, with space, works.
    t.cache.simulate_space_limit(10 << 20);
    let id = t.cache.commit_dir(&src).unwrap();
    assert_eq!(t.cache.check_artifact(&id).unwrap(), Health::Ok);
}

#[test]
fn a_full_disk_while_writing_the_manifest_leaves_no_artifact() {
    let mut t = TestCache::new();
    t.cache.simulate_space_limit(10);
    let staging = t.cache.staging().unwrap();
    write_tree(staging.path(), &[("w.bin", &[5u8; 1000][..])]);
    let err = t.cache.commit(staging).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert!(
        err.to_string().contains("manifests"),
        "names the manifest: {err}"
    );
    assert_consistent_after_failure(&t);
    let report = t.cache.gc(&GcRoots::default()).unwrap();
    assert_eq!(report.objects_removed, 1, "the orphan object is garbage");
}

#[test]
fn a_full_tmpfs_during_commit_is_a_clear_error() {
    // A real ENOSPC from the kernel, when this test may mount (root with CAP_SYS_ADMIN).
    let Some(fs_) = Tmpfs::mount("size=512k") else {
        eprintln!("skipped: cannot mount a tmpfs here (simulated by the two tests above)");
        return;
    };
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), &[("big.bin", &vec![9u8; 2 << 20][..])]);
    let cache = Cache::open(&fs_.path().join("cache")).unwrap();
    let err = cache.commit_dir(src.path()).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("big.bin"), "{err}");
    assert_eq!(count_files(&fs_.path().join("cache/v1/tmp")), 0);
    assert_eq!(count_files(&fs_.path().join("cache/v1/manifests")), 0);
    let small = tempfile::tempdir().unwrap();
    write_tree(small.path(), &[("s.txt", b"fits")]);
    let id = cache.commit_dir(small.path()).unwrap();
    assert_eq!(cache.check_artifact(&id).unwrap(), Health::Ok);
    drop(cache);
}

#[test]
fn an_unwritable_cache_folder_is_named() {
    let ro;
    let parent: PathBuf = if is_root() {
        // Root writes through permission bits, so use a read-only mount.
        match Tmpfs::mount("ro,size=64k") {
            Some(m) => {
                ro = Some(m);
                ro.as_ref().unwrap().path().to_path_buf()
            }
            None => {
                eprintln!("skipped: root without mount rights cannot be refused a write");
                return;
            }
        }
    } else {
        let d = tempfile::tempdir().unwrap().keep();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        d
    };
    let root = parent.join("cache");
    let err = Cache::open(&root).unwrap_err();
    assert!(matches!(err, Error::NotWritable { .. }), "{err}");
    assert!(
        err.to_string().contains(&root.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("POLLARD_CACHE_DIR"), "{err}");
}

#[test]
fn symlinks_escaping_the_folder_are_refused_by_name() {
    let t = TestCache::new();
    let outside = t.dir.path().join("secret.txt");
    fs::write(&outside, b"not yours").unwrap();
    for target in [
        outside.clone(),
        PathBuf::from("../../../secret.txt"),
        PathBuf::from("/nonexistent/far/away"),
    ] {
        let staging = t.cache.staging().unwrap();
        fs::create_dir(staging.path().join("sub")).unwrap();
        let link = staging.path().join("sub/link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = t.cache.commit(staging).unwrap_err();
        assert!(
            matches!(err, Error::SymlinkEscapes { .. }),
            "{target:?}: {err}"
        );
        assert!(err.to_string().contains("sub/link"), "{err}");
    }
    assert_eq!(t.count("objects"), 0);
    assert_eq!(t.count("tmp"), 0);
}

#[test]
fn symlinks_inside_the_folder_are_stored_as_their_file() {
    let t = TestCache::new();
    let staging = t.cache.staging().unwrap();
    write_tree(staging.path(), &[("real/w.bin", b"weights")]);
    std::os::unix::fs::symlink("real/w.bin", staging.path().join("alias.bin")).unwrap();
    let id = t.cache.commit(staging).unwrap();
    let art = t.cache.artifact(&id).unwrap().unwrap();
    assert_eq!(art.files().len(), 2);
    assert!(art
        .files()
        .iter()
        .all(|f| f.digest == Digest::of(b"weights")));
    assert_eq!(t.count("objects"), 1);

    let staging = t.cache.staging().unwrap();
    fs::create_dir(staging.path().join("d")).unwrap();
    std::os::unix::fs::symlink("d", staging.path().join("dirlink")).unwrap();
    let err = t.cache.commit(staging).unwrap_err().to_string();
    assert!(
        err.contains("dirlink") && err.contains("symlink to a folder"),
        "{err}"
    );
}

#[test]
fn special_files_are_refused_by_name() {
    let t = TestCache::new();
    let staging = t.cache.staging().unwrap();
    let fifo = staging.path().join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = t.cache.commit(staging).unwrap_err().to_string();
    assert!(err.contains("pipe") && err.contains("named pipe"), "{err}");
}

#[test]
fn hardlinked_outputs_are_copied_so_the_outside_file_stays_writable() {
    let t = TestCache::new();
    let outside = t.dir.path().join("user.bin");
    fs::write(&outside, b"user data").unwrap();
    let staging = t.cache.staging().unwrap();
    fs::hard_link(&outside, staging.path().join("out.bin")).unwrap();
    let id = t.cache.commit(staging).unwrap();
    assert_eq!(t.cache.check_artifact(&id).unwrap(), Health::Ok);
    let mode = fs::metadata(&outside).unwrap().permissions().mode();
    assert!(
        mode & 0o200 != 0,
        "the user's file was made read-only: {mode:o}"
    );
    assert_ne!(
        fs::metadata(&outside).unwrap().ino(),
        fs::metadata(object_path(&t, &Digest::of(b"user data")))
            .unwrap()
            .ino()
    );
}

#[test]
fn concurrent_commits_from_threads_store_once() {
    let t = Arc::new(TestCache::new());
    let barrier = Arc::new(Barrier::new(8));
    let ids: Vec<ArtifactId> = (0..8)
        .map(|i| {
            let (t, barrier) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                let staging = t.cache.staging().unwrap();
                write_tree(
                    staging.path(),
                    &[
                        ("shared.bin", &[3u8; 300_000][..]),
                        ("n.txt", format!("{}", i % 2).as_bytes()),
                    ],
                );
                barrier.wait();
                let id = t.cache.commit(staging).unwrap();
                t.cache.artifact_dir(&id).unwrap();
                id
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 2);
    assert_eq!(t.count("objects"), 3);
    assert!(t.cache.verify().unwrap().is_ok());
    for id in distinct {
        assert_eq!(t.cache.check_artifact(id).unwrap(), Health::Ok);
    }
}

/// Runs this test binary's `child_process_helper` with `action`; returns the child, whose
/// stdout is piped.
fn spawn_child(action: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "tests::child_process_helper",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POLLARD_CACHE_TEST_CHILD", action)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn wait_for_line(child: &mut std::process::Child, marker: &str) -> String {
    let prefix = marker;
    let out = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("child ended before printing {prefix}");
        }
        // The harness prints `test name ... ` without a newline before our first line.
        if let Some(i) = line.find(prefix) {
            return line[i + prefix.len()..].trim().to_string();
        }
    }
}

/// Not a test: the body of the child processes the tests below start.
#[test]
#[ignore = "helper run as a child process by other tests"]
fn child_process_helper() {
    let Ok(action) = std::env::var("POLLARD_CACHE_TEST_CHILD") else {
        return;
    };
    let parts: Vec<&str> = action.splitn(3, '|').collect();
    let cache = Cache::open(Path::new(parts[1])).unwrap();
    match parts[0] {
        "lock" => {
            let key: CacheKey = parts[2].parse().unwrap();
            let _guard = cache.lock_key(&key).unwrap();
            println!("LOCKED");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(30));
        }
        "commit" => {
            for _ in 0..5 {
                let staging = cache.staging().unwrap();
                write_tree(
                    staging.path(),
                    &[("big.bin", &vec![8u8; 6 << 20][..]), ("small", b"s")],
                );
                let id = cache.commit(staging).unwrap();
                cache.artifact_dir(&id).unwrap();
                println!("ID {id}");
            }
            std::io::stdout().flush().unwrap();
        }
        other => panic!("unknown child action {other}"),
    }
}

#[test]
fn concurrent_commits_from_processes_store_once() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    let mut children: Vec<_> = (0..3)
        .map(|_| spawn_child(&format!("commit|{root}|")))
        .collect();
    let staging = t.cache.staging().unwrap();
    write_tree(
        staging.path(),
        &[("big.bin", &vec![8u8; 6 << 20][..]), ("small", b"s")],
    );
    let mine = t.cache.commit(staging).unwrap();
    for c in children.iter_mut() {
        assert_eq!(wait_for_line(c, "ID "), mine.to_string());
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(t.count("objects"), 2);
    assert_eq!(t.count("manifests"), 1);
    let report = t.cache.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(t.cache.check_artifact(&mine).unwrap(), Health::Ok);
}

#[test]
fn the_lock_of_a_killed_process_is_recovered() {
    let t = TestCache::new();
    let key = CacheKey::of(b"stage key");
    let mut child = spawn_child(&format!("lock|{}|{key}", t.root().display()));
    wait_for_line(&mut child, "LOCKED");
    assert!(
        t.cache.try_lock_key(&key).unwrap().is_none(),
        "the child holds it"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let guard = t
        .cache
        .try_lock_key(&key)
        .unwrap()
        .expect("the kernel released the dead child's lock");
    assert_eq!(guard.key(), &key);
}

#[test]
fn a_key_is_computed_once_while_others_wait() {
    let t = Arc::new(TestCache::new());
    let key = CacheKey::of(b"k");
    let computed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (t, computed) = (t.clone(), computed.clone());
            std::thread::spawn(move || {
                let _g = t.cache.lock_key(&key).unwrap();
                if let Some(rec) = t.cache.record(&key).unwrap() {
                    return rec.artifact;
                }
                computed.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                let id = t.commit_files(&[("out", b"result")]);
                t.cache.put_record(&record(key, id)).unwrap();
                id
            })
        })
        .collect();
    let ids: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let held = t.cache.lock_key(&key).unwrap();
    assert!(t.cache.try_lock_key(&key).unwrap().is_none());
    drop(held);
    assert!(t.cache.try_lock_key(&key).unwrap().is_some());
}

fn record(key: CacheKey, artifact: ArtifactId) -> RunRecord {
    RunRecord {
        key,
        stage: "prune".into(),
        kind: "prune_width".into(),
        artifact,
        fingerprint: [("params".to_string(), serde_json::json!({"ffn": 0.5}))]
            .into_iter()
            .collect(),
        metrics: serde_json::json!({"loss": 1.25}),
        inputs: Default::default(),
        started: Timestamp::from_unix_millis(1_800_000_000_000),
        finished: Timestamp::from_unix_millis(1_800_000_002_500),
        duration_s: 2.5,
        devices: vec!["cpu".into()],
        memory: Default::default(),
        log: None,
    }
}

#[test]
fn records_round_trip_and_bad_ones_are_named() {
    let t = TestCache::new();
    let key = CacheKey::of(b"fingerprint");
    assert_eq!(t.cache.record(&key).unwrap(), None);
    let id = t.commit_files(&[("a", b"a")]);
    let rec = record(key, id);
    t.cache.put_record(&rec).unwrap();
    assert_eq!(t.cache.record(&key).unwrap(), Some(rec.clone()));
    let mut newer = rec.clone();
    newer.metrics = serde_json::json!({"loss": 1.0});
    t.cache.put_record(&newer).unwrap();
    assert_eq!(t.cache.record(&key).unwrap(), Some(newer));
    let text = fs::read_to_string(t.cache.layout.record_path(&key)).unwrap();
    assert!(
        text.contains("\"started\": \"2027-01-15T08:00:00.000Z\""),
        "{text}"
    );

    let path = t.cache.layout.record_path(&key);
    fs::write(&path, b"{ truncated").unwrap();
    let err = t.cache.record(&key).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    let other = CacheKey::of(b"other");
    fs::write(
        t.cache.layout.record_path(&other),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap_or_else(|_| {
        fs::create_dir_all(t.cache.layout.record_path(&other).parent().unwrap()).unwrap();
        fs::write(
            t.cache.layout.record_path(&other),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
    });
    let err = t.cache.record(&other).unwrap_err().to_string();
    assert!(err.contains("holds key"), "{err}");
}

#[test]
fn gc_keeps_roots_and_young_records_and_frees_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = Cache::open(&root).unwrap();
    let commit = |files: &[(&str, &[u8])]| {
        let s = cache.staging().unwrap();
        write_tree(s.path(), files);
        cache.commit(s).unwrap()
    };
    let shared = vec![1u8; 10_000];
    let in_lock = commit(&[("a", &shared), ("only-a", b"A")]);
    let young = commit(&[("b", b"B")]);
    let old = commit(&[("c", &shared), ("only-c", &[2u8; 20_000])]);
    let (k_young, k_old) = (CacheKey::of(b"young"), CacheKey::of(b"old"));
    cache.put_record(&record(k_young, young)).unwrap();
    cache.put_record(&record(k_old, old)).unwrap();
    let old_path = cache.layout.record_path(&k_old);
    fs::File::options()
        .write(true)
        .open(&old_path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let lock_file = dir.path().join("recipe.lock");
    fs::write(
        &lock_file,
        format!("stages:\n  prune:\n    out: {in_lock}\n"),
    )
    .unwrap();
    // Leftover of a crashed run.
    fs::create_dir(root.join("v1/tmp/staging-crashed")).unwrap();
    fs::write(root.join("v1/tmp/staging-crashed/x"), b"x").unwrap();

    // Another process (here: another open) using the cache blocks gc.
    let other = Cache::open(&root).unwrap();
    let roots = GcRoots {
        lock_files: vec![lock_file.clone()],
        keep_newer_than: Some(Duration::from_secs(600)),
        ..Default::default()
    };
    let err = cache.gc(&roots).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    drop(other);

    let report = cache.gc(&roots).unwrap();
    assert_eq!(report.records_removed, 1);
    assert_eq!(report.artifacts_removed, 1);
    assert_eq!(report.objects_removed, 1, "only-c; the shared object stays");
    assert_eq!(report.records_kept, 1);
    assert_eq!(report.artifacts_kept, 2);
    assert_eq!(report.objects_kept, 3);
    assert!(report.temp_removed >= 1);
    assert!(report.bytes_freed >= 20_000, "{report:?}");
    assert_eq!(cache.check_artifact(&in_lock).unwrap(), Health::Ok);
    assert_eq!(cache.check_artifact(&young).unwrap(), Health::Ok);
    assert_eq!(cache.check_artifact(&old).unwrap(), Health::Missing);
    assert!(cache.record(&k_old).unwrap().is_none());
    assert!(cache.record(&k_young).unwrap().is_some());
    assert!(!root.join("v1/tmp/staging-crashed").exists());
    assert!(cache.verify().unwrap().is_ok());
    // The cache still works after gc (shared lock restored).
    let again = commit(&[("c", &shared), ("only-c", &[2u8; 20_000])]);
    assert_eq!(again, old);

    let err = cache
        .gc(&GcRoots {
            lock_files: vec![dir.path().join("missing.lock")],
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("missing.lock"), "{err}");
}

#[test]
fn materialize_links_or_copies_read_only_and_never_overwrites() {
    let t = TestCache::new();
    let staging = t.cache.staging().unwrap();
    write_tree(
        staging.path(),
        &[("w.bin", b"weights"), ("sub/tool", b"#!/bin/sh\n")],
    );
    fs::set_permissions(
        staging.path().join("sub/tool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let id = t.cache.commit(staging).unwrap();
    let dest = t.dir.path().join("work/out");
    let m = t.cache.materialize(&id, &dest).unwrap();
    assert_eq!(m.files, 2);
    assert_eq!(m.reflinked + m.hardlinked + m.copied, 2);
    assert_eq!(fs::read(dest.join("w.bin")).unwrap(), b"weights");
    assert_eq!(
        fs::metadata(dest.join("w.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o444
    );
    assert_eq!(
        fs::metadata(dest.join("sub/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    let err = t.cache.materialize(&id, &dest).unwrap_err();
    assert!(matches!(err, Error::DestinationExists { .. }), "{err}");
    let missing = ArtifactId(Digest::of(b"nothing"));
    let err = t
        .cache
        .materialize(&missing, &t.dir.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&missing.to_string()), "{err}");
    let leftovers: Vec<_> = fs::read_dir(t.dir.path().join("work"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn a_tampered_manifest_cannot_point_outside() {
    let bytes = br#"{"format":"pollard-artifact/1","files":[{"path":"../evil","size":1,"executable":false,"digest":"blake3:0000000000000000000000000000000000000000000000000000000000000000"}]}"#;
    let err = Manifest::parse(Path::new("/m.json"), bytes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("../evil") && err.contains("/m.json"), "{err}");
    let t = TestCache::new();
    let id = ArtifactId(Digest::of(bytes));
    let path = t.cache.layout.manifest_path(&id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, bytes).unwrap();
    let Health::Damaged(p) = t.cache.check_artifact(&id).unwrap() else {
        panic!("accepted")
    };
    assert_eq!(p[0].kind, ProblemKind::CorruptManifest);
    assert_eq!(
        t.cache.check_artifact(&id).unwrap(),
        Health::Missing,
        "quarantined"
    );
}

#[test]
fn a_stale_artifact_folder_is_rebuilt() {
    let t = TestCache::new();
    let id = t.commit_files(&[("a", b"aaa"), ("b", b"bbb")]);
    let dir = t.cache.artifact_dir(&id).unwrap();
    // Someone removes a file from the folder (root ignores the read-only bits).
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(dir.join("b")).unwrap();
    fs::write(dir.join("extra"), b"x").unwrap();
    let again = t.cache.artifact_dir(&id).unwrap();
    assert_eq!(again, dir);
    assert_eq!(fs::read(dir.join("b")).unwrap(), b"bbb");
    assert!(!dir.join("extra").exists());
}

/// Regression: threads publishing one artifact's folder at once could see another thread move
/// the folder they had just failed to replace out of the way, and fail with "publish artifact
/// folder: Directory not empty". Every caller must get the folder, complete, each round.
#[test]
fn concurrent_publishers_of_one_artifact_folder_all_get_it() {
    let t = Arc::new(TestCache::new());
    let id = t.commit_files(&[("a.bin", &[1u8; 4096][..]), ("sub/b.txt", b"b")]);
    let tree = t.cache.layout.tree_path(&id);
    for _round in 0..40 {
        // No folder yet: every thread builds one and races to publish it.
        let _ = crate::fsutil::remove_tree(&tree);
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (t, barrier) = (t.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let dir = t.cache.artifact_dir(&id)?;
                    Ok::<_, crate::Error>(fs::read(dir.join("sub/b.txt")).is_ok())
                })
            })
            .collect();
        for h in handles {
            let got = h.join().expect("thread").expect("artifact_dir");
            assert!(got, "the published folder lacked sub/b.txt");
        }
    }
}
