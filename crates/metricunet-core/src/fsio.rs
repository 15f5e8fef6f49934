//! The one way metricunet writes a file: into a temporary file in the same folder, synced,
//! then renamed over the target, so a kill or a full disk at any moment leaves either the old
//! file or the new one, never half of one. And the one rule that removes the temporary files
//! a killed process left behind.
//!
//! A temporary file is named `.tmp-<pid>-<host>-<file name>`: the final name stays at its end
//! (writers that pick a format from the extension, such as NIfTI `.nii.gz` or a `.png`, see
//! the right one), and the writer's process and host are in it, so [`remove_temporaries`]
//! removes only files whose writer is gone: on this host a process that no longer runs, on
//! another host (a shared file system) one older than [`FOREIGN_TEMPORARY_AGE`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// A file that could not be written; the target is untouched.
#[derive(Debug, Error)]
#[error("{}: cannot write: {message}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub message: String,
}

impl WriteError {
    fn new(path: &Path, message: impl std::fmt::Display) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// This machine's name (for temporary names, locks and run records).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` runs on this host (true where that cannot be told).
pub fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// The host part of a temporary name: no dots or dashes, so the name parses back.
fn host_tag() -> String {
    host_name().replace(['.', '-', '/'], "_")
}

const PREFIX: &str = ".tmp-";

/// A temporary file of another host is taken as abandoned once it is this old.
pub const FOREIGN_TEMPORARY_AGE: Duration = Duration::from_secs(3600);

/// The temporary name this process writes `path` through.
pub fn temporary_path(path: &Path) -> PathBuf {
    temporary_path_of(path, std::process::id())
}

/// The temporary name process `pid` of this host writes `path` through.
pub fn temporary_path_of(path: &Path, pid: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{PREFIX}{pid}-{}-{name}", host_tag()))
}

/// The writer (pid, host tag) of a temporary file name, `None` for any other name.
pub fn temporary_writer(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (host, target) = rest.split_once('-')?;
    (!target.is_empty()).then_some(())?;
    Some((pid.parse().ok()?, host))
}

/// Write `path` atomically through a writer that needs a file name (NIfTI, plotters,
/// safetensors): `write` creates the temporary file it is given. On success the file is
/// synced and renamed over `path`; on any failure the temporary file is removed and `path`
/// is as it was.
pub fn write_atomic_at(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), WriteError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| WriteError::new(dir, e))?;
    }
    let tmp = temporary_path(path);
    let done = write(&tmp)
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    done.map_err(|message| {
        let _ = std::fs::remove_file(&tmp);
        WriteError::new(path, message)
    })
}

/// Write `path` atomically, `write` filling the (buffered) temporary file.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), String>,
) -> Result<(), WriteError> {
    write_atomic_at(path, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        w.flush().map_err(|e| e.to_string())
    })
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(|e| e.to_string()))
}

/// Copy `from` to `to` atomically.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<(), WriteError> {
    let bytes = std::fs::read(from).map_err(|e| WriteError::new(from, e))?;
    write_atomic(to, &bytes)
}

/// Whether the temporary file `path` (named `name`) was abandoned by its writer.
fn abandoned(path: &Path, name: &str) -> bool {
    let Some((pid, host)) = temporary_writer(name) else {
        return false;
    };
    if host == host_tag() {
        return pid != std::process::id() && !pid_alive(pid);
    }
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= FOREIGN_TEMPORARY_AGE)
}

/// Remove the temporary files abandoned in `dir` (and its sub-folders when `recursive`) by
/// writers that are gone; files of running writers and every other file are kept. Returns how
/// many were removed.
pub fn remove_temporaries(dir: &Path, recursive: bool) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if recursive {
                removed += remove_temporaries(&p, true);
            }
        } else if abandoned(&p, &name) && std::fs::remove_file(&p).is_ok() {
            tracing::debug!("removed {} (left by a killed process)", p.display());
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_keep_the_extension_and_parse_back() {
        let t = temporary_path(Path::new("/x/case_001.nii.gz"));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with("-case_001.nii.gz"), "{name}");
        let (pid, host) = temporary_writer(&name).expect("ours");
        assert_eq!(pid, std::process::id());
        assert_eq!(host, host_tag());
        assert_eq!(temporary_writer(".lock"), None);
        assert_eq!(temporary_writer("plan.yaml"), None);
        assert_eq!(temporary_writer(".tmp-12-host-"), None);
    }

    #[test]
    fn writes_replace_whole_files_and_failures_leave_the_old_one() {
        let dir = std::env::temp_dir().join(format!("fsio-test-{}", std::process::id()));
        let path = dir.join("sub").join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"half").map_err(|e| e.to_string())?;
            Err("disk full".into())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("a.txt: cannot write: disk full"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cleanup_removes_only_abandoned_temporaries() {
        let dir = std::env::temp_dir().join(format!("fsio-clean-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        // a dead process of this host (pid beyond pid_max), at the top and in a sub-folder
        let dead = temporary_path_of(&dir.join("plan.yaml"), 4294967);
        let dead_sub = temporary_path_of(&dir.join("sub").join("x.nii.gz"), 4294967);
        // this (running) process, another host's fresh file, and ordinary files
        let mine = temporary_path(&dir.join("m.yaml"));
        let foreign = ".tmp-12-elsewhere-cell.yaml";
        for p in [&dead, &dead_sub, &mine] {
            std::fs::write(p, "x").unwrap();
        }
        for n in [foreign, ".lock", "plan.yaml", ".hidden.tmp"] {
            std::fs::write(dir.join(n), "x").unwrap();
        }
        assert_eq!(remove_temporaries(&dir, false), 1);
        assert!(dead_sub.exists());
        assert_eq!(remove_temporaries(&dir, true), 1);
        for n in [foreign, ".lock", "plan.yaml", ".hidden.tmp"] {
            assert!(dir.join(n).exists(), "{n} kept");
        }
        assert!(mine.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
