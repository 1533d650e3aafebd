//! Value parsers shared by the example binaries' flags (`qkd`, `qkd-link`):
//! checked where clap parses them, so a careless value ends in clap's error
//! naming the flag, and exit status 2, before any work starts.

use std::path::{Path, PathBuf};

/// A finite `f64` (Rust's parser also takes `nan`, `inf` and `1e999`).
///
/// # Errors
/// Not a number, or not finite.
pub fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| String::from("must be a number"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err("must be a finite number".into())
    }
}

/// A file to read: it must exist and not be a folder.
///
/// # Errors
/// A folder, or a path that cannot be read.
pub fn input_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Err("is a folder, not a file".into()),
        Ok(_) => Ok(path),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

/// A file to write: not a folder, in a folder that exists.
///
/// # Errors
/// An empty name, a folder, or a parent folder that does not exist.
pub fn output_file(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("must name a file".into());
    }
    let path = PathBuf::from(s);
    if path.is_dir() {
        return Err("is a folder, not a file".into());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(format!(
            "the folder {} does not exist (or is not a folder)",
            parent.display()
        ));
    }
    Ok(path)
}
