//! Markdown rendering of the report's blocks.

use std::fmt::Write as _;

use super::blocks::Block;

pub(super) fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub(super) fn to_markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(out, "{} {}\n", "#".repeat(*level as usize), text);
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "{text}\n");
            }
            Block::Table { header, rows } => {
                let cells =
                    |r: &[String]| r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ");
                let _ = writeln!(out, "| {} |", cells(header));
                let _ = writeln!(out, "|{}|", vec!["---"; header.len()].join("|"));
                for r in rows {
                    let _ = writeln!(out, "| {} |", cells(r));
                }
                out.push('\n');
            }
            Block::Figure { src, caption, .. } => {
                let _ = writeln!(out, "![{}]({})\n\n*{}*\n", md_cell(caption), src, caption);
            }
            Block::Code { lang, text } => {
                // A fence longer than any backtick run inside the text.
                let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
                let fence = "`".repeat(longest.max(2) + 1);
                let _ = writeln!(out, "{fence}{lang}\n{}\n{fence}\n", text.trim_end());
            }
        }
    }
    out
}
