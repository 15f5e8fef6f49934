//! Atomic writes: a temporary file in the same folder, then a rename, so a kill at any
//! moment leaves either the old file or the new one, never half of one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Result, RunError};

fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Write `path` atomically: `write` fills a temporary file in the same folder (named with this
/// process's id, so concurrent writers never share one), which is synced and then renamed.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::result::Result<(), String>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
    }
    let tmp = temporary(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| RunError::io(&tmp, e))?;
    if let Err(message) = write(&mut f) {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(RunError::file(path, message));
    }
    f.sync_all().map_err(|e| RunError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(|e| e.to_string()))
}

/// Copy `from` to `to` atomically.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| RunError::io(from, e))?;
    write_atomic(to, &bytes)
}

/// Serialise `value` as YAML into `path` atomically.
pub fn write_yaml<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_norway::to_string(value).map_err(|e| RunError::file(path, e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// Read a YAML file written by [`write_yaml`].
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
    serde_norway::from_str(&text).map_err(|e| RunError::file(path, e.to_string()))
}

/// Remove temporary files a killed process left in `dir` and its sub-folders (hidden names
/// with `tmp` in them: ours, the NIfTI writer's and the checkpointer's).
pub fn remove_temporaries(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if p.is_dir() {
            remove_temporaries(&p);
        } else if n.starts_with('.') && n.contains("tmp") {
            let _ = std::fs::remove_file(&p);
        }
    }
}
