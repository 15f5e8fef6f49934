//! The training log (`train_log.csv`): one row per iteration, header from the first row's
//! columns. On resume the rows after the checkpoint's iteration (written by the killed run
//! after its last checkpoint, maybe half) are dropped, so the log and the weights agree.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use crate::trainer::IterationLog;

/// Appends rows to a stage's log.
pub struct TrainLog {
    path: PathBuf,
    file: BufWriter<std::fs::File>,
    /// The header written (or found on resume); later rows must have its columns.
    header: Option<String>,
}

impl TrainLog {
    /// Open `path` for a run that starts after `resumed_at` iterations (`None`: a new run,
    /// whose stale log, left by a run killed before its first checkpoint, is removed). With
    /// the log come the rows it keeps (those up to `resumed_at`), for stop rules to replay.
    pub fn open(path: &Path, resumed_at: Option<usize>) -> Result<(Self, Vec<IterationLog>)> {
        let (header, rows) = match resumed_at {
            Some(iteration) => truncate(path, iteration)?,
            None => {
                if path.exists() {
                    std::fs::remove_file(path).map_err(|e| TrainError::io(path, e))?;
                }
                (None, Vec::new())
            }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(BufWriter::new)
            .map_err(|e| TrainError::io(path, e))?;
        let log = Self {
            path: path.to_path_buf(),
            file,
            header,
        };
        Ok((log, rows))
    }

    /// Append `row` (the header first, when the log is new); a row whose columns differ from
    /// the log's header (a resumed run with other samplers, say) is an error.
    pub fn write(&mut self, row: &IterationLog) -> Result<()> {
        let columns = header(row);
        match &self.header {
            Some(h) if *h != columns => {
                return Err(TrainError::Invalid(format!(
                    "{}: the log's columns ({h}) differ from this run's ({columns})",
                    self.path.display()
                )));
            }
            Some(_) => {}
            None => {
                writeln!(self.file, "{columns}").map_err(|e| TrainError::io(&self.path, e))?;
                self.header = Some(columns);
            }
        }
        writeln!(self.file, "{}", line(row)).map_err(|e| TrainError::io(&self.path, e))
    }

    /// Write buffered rows to the file (before a checkpoint, so the log is never behind it).
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

fn line(log: &IterationLog) -> String {
    let mut cols = vec![log.iteration.to_string(), format!("{:.6e}", log.lr)];
    cols.extend(log.terms.iter().map(|(_, v)| format!("{v:.6}")));
    cols.push(format!("{:.2}", log.samples_per_s));
    cols.extend(
        log.validation
            .iter()
            .map(|(_, v)| v.map(|d| format!("{d:.4}")).unwrap_or_default()),
    );
    cols.join(",")
}

fn header(log: &IterationLog) -> String {
    let mut cols = vec!["iteration".to_string(), "lr".to_string()];
    cols.extend(log.terms.iter().map(|(k, _)| k.clone()));
    cols.push("samples_per_s".into());
    cols.extend(log.validation.iter().map(|(k, _)| format!("val_{k}")));
    cols.join(",")
}

/// A row of the log read back (`None` for a row that is not whole).
fn parse(header: &[&str], line: &str) -> Option<IterationLog> {
    let cols: Vec<&str> = line.split(',').collect();
    if cols.len() != header.len() {
        return None;
    }
    let num = |i: usize| cols[i].parse::<f64>().ok();
    let timing = header.iter().position(|h| *h == "samples_per_s")?;
    Some(IterationLog {
        iteration: cols.first()?.parse().ok()?,
        lr: num(1)?,
        terms: (2..timing)
            .map(|i| Some((header[i].to_string(), num(i)?)))
            .collect::<Option<_>>()?,
        samples_per_s: num(timing)?,
        validation: (timing + 1..header.len())
            .map(|i| {
                let name = header[i].strip_prefix("val_")?;
                Some((name.to_string(), num(i)))
            })
            .collect::<Option<_>>()?,
    })
}

/// Keep the log's header and the whole rows up to `iteration`, rewritten atomically; the
/// header (`None` when there is no log) and the rows kept.
fn truncate(path: &Path, iteration: usize) -> Result<(Option<String>, Vec<IterationLog>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok((None, Vec::new()));
    };
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok((None, Vec::new()));
    };
    let columns: Vec<&str> = header.split(',').collect();
    let mut out = String::from(header);
    out.push('\n');
    let mut rows = Vec::new();
    for line in lines {
        if let Some(row) = parse(&columns, line).filter(|r| r.iteration <= iteration) {
            out.push_str(line);
            out.push('\n');
            rows.push(row);
        }
    }
    metricunet_core::fsio::write_atomic(path, out.as_bytes())?;
    Ok((Some(header.to_string()), rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(iteration: usize, val: Option<f64>) -> IterationLog {
        IterationLog {
            iteration,
            lr: 0.01,
            terms: vec![("ce".into(), 0.5), ("total".into(), 0.5)],
            samples_per_s: 10.0,
            validation: vec![("dsc".into(), val)],
        }
    }

    #[test]
    fn resume_drops_rows_after_the_checkpoint_and_half_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("train_log.csv");
        let (mut log, _) = TrainLog::open(&path, None).expect("open");
        for i in 1..=4 {
            log.write(&row(i, (i == 2).then_some(0.75))).expect("write");
        }
        log.flush().expect("flush");
        drop(log);
        // a killed run's half row
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        write!(f, "5,1.0e-2,0.").expect("half");
        drop(f);
        let (mut log, kept) = TrainLog::open(&path, Some(2)).expect("resume");
        assert_eq!(kept, vec![row(1, None), row(2, Some(0.75))]);
        log.write(&row(3, None)).expect("write");
        log.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "iteration,lr,ce,total,samples_per_s,val_dsc");
        assert_eq!(lines[2], "2,1.000000e-2,0.500000,0.500000,10.00,0.7500");
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[3].starts_with("3,"));
        // other columns than the log's are refused, naming the file
        let mut other = row(4, None);
        other.terms.push(("random/anchors".into(), 3.0));
        let e = log.write(&other).unwrap_err().to_string();
        assert!(e.contains("train_log.csv") && e.contains("differ"), "{e}");
    }

    #[test]
    fn a_new_run_removes_a_stale_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("train_log.csv");
        std::fs::write(&path, "iteration,lr\n1,0.1\n").expect("stale");
        let (mut log, _) = TrainLog::open(&path, None).expect("open");
        log.write(&row(1, None)).expect("write");
        log.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("iteration,lr,ce"), "{text}");
    }
}
