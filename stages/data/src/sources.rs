//! Where a dataset's text comes from, before splitting: the `dataset` stage's `text.files`
//! globs, expanded against the manifest's folder in a stable order and read as UTF-8.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// True when `s` has a glob metacharacter.
fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}'])
}

/// Expands `patterns` (relative to `base`, or absolute) into files: each pattern's matches in
/// sorted order, patterns in the order given, a file matched twice kept at its first place.
/// A pattern that matches no file (directories do not count) is an error naming it.
pub fn expand_globs(base: &Path, patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            base.join(pattern)
        };
        let full = full.to_str().ok_or_else(|| Error::BadGlob {
            index,
            pattern: pattern.clone(),
            message: format!("the folder {} is not valid UTF-8", base.display()),
        })?;
        let paths = glob::glob(full).map_err(|e| Error::BadGlob {
            index,
            pattern: pattern.clone(),
            message: e.to_string(),
        })?;
        let mut matched: Vec<PathBuf> = Vec::new();
        for entry in paths {
            let path = entry.map_err(|e| Error::Io {
                op: "read folder",
                path: e.path().to_owned(),
                source: e.into(),
            })?;
            if path.is_file() {
                matched.push(path);
            }
        }
        if matched.is_empty() {
            return Err(Error::NoMatch {
                index,
                pattern: pattern.clone(),
                base: base.to_owned(),
            });
        }
        matched.sort();
        for path in matched {
            if seen.insert(path.clone()) {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// Checks a pattern's syntax without touching the filesystem (validation before planning).
pub fn check_glob(pattern: &str) -> std::result::Result<(), String> {
    glob::Pattern::new(pattern)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The part of a relative pattern before its first glob component: the folder whose content
/// covers everything the pattern can match (`data/**/*.txt` -> `data`, a plain path -> itself,
/// `*.txt` -> `.`). The `dataset` stage reports these as `deps`, because planning happens
/// before the patterns can be expanded against the manifest's folder.
pub fn glob_root(pattern: &str) -> PathBuf {
    let mut root = PathBuf::new();
    for comp in Path::new(pattern).components() {
        match comp {
            Component::Normal(s) if has_glob(&s.to_string_lossy()) => break,
            other => root.push(other),
        }
    }
    if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    }
}

/// Reads `path` as UTF-8 text (a leading byte-order mark is dropped).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/sub")).unwrap();
        for (name, text) in [
            ("data/b.txt", "b"),
            ("data/a.txt", "a"),
            ("data/sub/c.txt", "c"),
            ("data/notes.md", "m"),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn names(base: &Path, files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.strip_prefix(base).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn globs_expand_sorted_in_pattern_order_without_duplicates() {
        let dir = tree();
        let files = expand_globs(
            dir.path(),
            &[
                "data/*.md".into(),
                "data/**/*.txt".into(),
                "data/a.txt".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            names(dir.path(), &files),
            vec![
                "data/notes.md",
                "data/a.txt",
                "data/b.txt",
                "data/sub/c.txt"
            ]
        );
    }

    #[test]
    fn a_pattern_matching_nothing_is_named() {
        let dir = tree();
        let err = expand_globs(dir.path(), &["data/*.txt".into(), "corpus/*.txt".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("text.files[1]")
                && err.contains("corpus/*.txt")
                && err.contains("matches no file"),
            "{err}"
        );
        // A folder is not a file.
        let err = expand_globs(dir.path(), &["data/su*".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches no file"), "{err}");
        let err = expand_globs(dir.path(), &["data/[".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("text.files[0]") && err.contains("not a valid glob"),
            "{err}"
        );
    }

    #[test]
    fn glob_roots_cover_the_matches() {
        assert_eq!(glob_root("data/**/*.txt"), PathBuf::from("data"));
        assert_eq!(glob_root("data/a.txt"), PathBuf::from("data/a.txt"));
        assert_eq!(glob_root("*.txt"), PathBuf::from("."));
        assert_eq!(glob_root("/abs/dir/x*.txt"), PathBuf::from("/abs/dir"));
    }

    #[test]
    fn non_utf8_text_is_refused_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.txt");
        std::fs::write(&path, b"caf\xe9").unwrap();
        let err = read_text(&path).unwrap_err().to_string();
        assert!(
            err.contains("latin1.txt") && err.contains("offset 3"),
            "{err}"
        );
        std::fs::write(&path, "\u{feff}hello").unwrap();
        assert_eq!(read_text(&path).unwrap(), "hello");
    }
}
