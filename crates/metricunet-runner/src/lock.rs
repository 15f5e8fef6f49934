//! Folder locks, so that shards of a sweep on one file system never train the same stage 1
//! or the same cell twice at once. A lock is a file `.lock` holding `host pid`; one left by
//! a killed process on this host (its pid is gone) is taken over.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Result, RunError};

pub use metricunet_core::fsio::host_name;
use metricunet_core::fsio::pid_alive;

/// A held lock; released (file removed) on drop.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} on {}", self.pid, self.host)
    }
}

impl DirLock {
    /// Take the lock of `dir` (created), or say who holds it.
    pub fn try_acquire(dir: &Path) -> Result<std::result::Result<Self, Holder>> {
        std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
        let path = dir.join(".lock");
        let me = Holder {
            host: host_name(),
            pid: std::process::id(),
        };
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{} {}", me.host, me.pid).map_err(|e| RunError::io(&path, e))?;
                    return Ok(Ok(Self { path }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut parts = text.split_whitespace();
                    let holder = match (parts.next(), parts.next().and_then(|p| p.parse().ok())) {
                        (Some(h), Some(pid)) => Holder {
                            host: h.to_string(),
                            pid,
                        },
                        // empty: the holder was killed between creating and writing it
                        _ => Holder {
                            host: me.host.clone(),
                            pid: 0,
                        },
                    };
                    let stale =
                        holder.host == me.host && (holder.pid == 0 || !pid_alive(holder.pid));
                    if stale {
                        tracing::info!("{}: taking over a stale lock of {holder}", dir.display());
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    return Ok(Err(holder));
                }
                Err(e) => return Err(RunError::io(&path, e)),
            }
        }
        Err(RunError::file(
            &path,
            "could not take the lock (it keeps reappearing)",
        ))
    }

    /// Take the lock of `dir`, waiting (polling every `poll`) while another process holds it.
    pub fn acquire_waiting(dir: &Path, poll: Duration) -> Result<Self> {
        let mut said = false;
        loop {
            match Self::try_acquire(dir)? {
                Ok(l) => return Ok(l),
                Err(holder) => {
                    if !said {
                        tracing::info!("{}: waiting for {holder}", dir.display());
                        said = true;
                    }
                    std::thread::sleep(poll);
                }
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_stale_and_released() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = DirLock::try_acquire(dir.path()).expect("io").expect("free");
        let held = DirLock::try_acquire(dir.path()).expect("io").unwrap_err();
        assert_eq!(held.pid, std::process::id());
        drop(a);
        let b = DirLock::try_acquire(dir.path())
            .expect("io")
            .expect("released");
        drop(b);
        // a lock of a process that no longer exists on this host is taken over
        std::fs::write(dir.path().join(".lock"), format!("{} 4294967", host_name())).expect("w");
        assert!(DirLock::try_acquire(dir.path()).expect("io").is_ok());
        // another host's lock is respected
        std::fs::write(dir.path().join(".lock"), "elsewhere 12").expect("w");
        let h = DirLock::try_acquire(dir.path()).expect("io").unwrap_err();
        assert_eq!(h.host, "elsewhere");
    }
}
