//! The report as a list of blocks, rendered to Markdown (figures beside it) and to one
//! self-contained HTML file (figures embedded as base64 PNG).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{ReportError, Result};

/// A piece of the report. Text may hold `code` spans.
#[derive(Debug, Clone)]
pub enum Block {
    Title(String),
    Heading(String),
    Para(String),
    List(Vec<String>),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// Path relative to the report folder, alt text, caption.
    Image {
        path: String,
        alt: String,
        caption: String,
    },
    Code(String),
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Markdown text of the blocks.
pub fn markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        match b {
            Block::Title(t) => {
                let _ = writeln!(out, "# {t}\n");
            }
            Block::Heading(t) => {
                let _ = writeln!(out, "## {t}\n");
            }
            Block::Para(t) => {
                let _ = writeln!(out, "{t}\n");
            }
            Block::List(items) => {
                for i in items {
                    let _ = writeln!(out, "- {i}");
                }
                out.push('\n');
            }
            Block::Table { header, rows } => {
                let _ = writeln!(
                    out,
                    "| {} |",
                    header
                        .iter()
                        .map(|h| md_cell(h))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                for r in rows {
                    let _ = writeln!(
                        out,
                        "| {} |",
                        r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")
                    );
                }
                out.push('\n');
            }
            Block::Image { path, alt, caption } => {
                let _ = writeln!(out, "![{alt}]({path})\n\n*{caption}*\n");
            }
            Block::Code(t) => {
                let _ = writeln!(out, "```yaml\n{}\n```\n", t.trim_end());
            }
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escape, then turn `code` spans into <code>.
fn inline(s: &str) -> String {
    let e = escape(s);
    let mut out = String::new();
    for (i, part) in e.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Standard base64 (RFC 4648) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #bbb;padding:4px 8px;text-align:left}\
th{background:#eee}img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{font-size:14px;color:#444}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}code{background:#f1f1f1;padding:0 3px}";

/// Self-contained HTML of the blocks; images are read from `dir` and embedded.
pub fn html(blocks: &[Block], dir: &Path) -> Result<String> {
    let title = blocks
        .iter()
        .find_map(|b| match b {
            Block::Title(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "metricunet report".into());
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    for b in blocks {
        match b {
            Block::Title(t) => {
                let _ = writeln!(out, "<h1>{}</h1>", inline(t));
            }
            Block::Heading(t) => {
                let _ = writeln!(out, "<h2>{}</h2>", inline(t));
            }
            Block::Para(t) => {
                let _ = writeln!(out, "<p>{}</p>", inline(t));
            }
            Block::List(items) => {
                out.push_str("<ul>");
                for i in items {
                    let _ = write!(out, "<li>{}</li>", inline(i));
                }
                out.push_str("</ul>\n");
            }
            Block::Table { header, rows } => {
                out.push_str("<table><thead><tr>");
                for h in header {
                    let _ = write!(out, "<th>{}</th>", inline(h));
                }
                out.push_str("</tr></thead><tbody>\n");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        let _ = write!(out, "<td>{}</td>", inline(c));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody></table>\n");
            }
            Block::Image { path, alt, caption } => {
                let p = dir.join(path);
                let bytes = std::fs::read(&p).map_err(|e| ReportError::io(&p, e))?;
                let _ = writeln!(
                    out,
                    "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>",
                    escape(alt),
                    base64(&bytes),
                    inline(caption)
                );
            }
            Block::Code(t) => {
                let _ = writeln!(out, "<pre>{}</pre>", escape(t));
            }
        }
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn markdown_and_html_escape() {
        let blocks = vec![
            Block::Title("a <b>".into()),
            Block::Table {
                header: vec!["x|y".into()],
                rows: vec![vec!["`1`".into()]],
            },
        ];
        let md = markdown(&blocks);
        assert!(md.contains("# a <b>") && md.contains("x\\|y"), "{md}");
        let h = html(&blocks, Path::new(".")).expect("html");
        assert!(
            h.contains("<h1>a &lt;b&gt;</h1>") && h.contains("<td><code>1</code></td>"),
            "{h}"
        );
    }
}
