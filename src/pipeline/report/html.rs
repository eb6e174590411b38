//! HTML rendering of the report's blocks: one self-contained page with inline CSS.

use std::fmt::Write as _;

use super::blocks::Block;

pub(super) fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1120px;margin:24px auto;padding:0 24px;color:#222;line-height:1.5}
h1{font-size:1.8em;border-bottom:2px solid #ddd;padding-bottom:6px}
h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #eee}
p.findings{background:#f5f8fc;border-left:4px solid #1f77b4;padding:12px 16px}
table{border-collapse:collapse;margin:12px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f0f0f0;text-align:center}
img.pixelated{image-rendering:pixelated}
td:first-child,th:first-child,td.text{text-align:left}
figure{margin:20px 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#444;font-size:0.95em;margin-top:6px}
pre{background:#f6f6f6;padding:12px;overflow-x:auto;border:1px solid #e3e3e3}";

pub(super) fn to_html(title: &str, blocks: &[Block]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n",
        html_escape(title)
    );
    let mut after_findings = false;
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                after_findings = text == "Findings";
                let _ = writeln!(out, "<h{level}>{}</h{level}>", html_escape(text));
            }
            Block::Paragraph(text) => {
                let class = if after_findings {
                    " class=\"findings\""
                } else {
                    ""
                };
                let _ = writeln!(out, "<p{class}>{}</p>", html_escape(text));
                after_findings = false;
            }
            Block::Table { header, rows } => {
                out.push_str("<table>\n<thead><tr>");
                for h in header {
                    let _ = write!(out, "<th>{}</th>", html_escape(h));
                }
                out.push_str("</tr></thead>\n<tbody>\n");
                for r in rows {
                    out.push_str("<tr>");
                    for (i, c) in r.iter().enumerate() {
                        // Name columns (model, "trained on", setting values) read left-aligned.
                        let numeric = c
                            .chars()
                            .next()
                            .is_some_and(|ch| ch.is_ascii_digit() || ch == '-' || ch == '—');
                        let class = if i > 0 && !numeric {
                            " class=\"text\""
                        } else {
                            ""
                        };
                        let _ = write!(out, "<td{class}>{}</td>", html_escape(c));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody>\n</table>\n");
            }
            Block::Figure { src, caption, size } => {
                let dims = size.map_or(String::new(), |(w, h)| {
                    format!(" width=\"{w}\" height=\"{h}\" class=\"pixelated\"")
                });
                let _ = writeln!(
                    out,
                    "<figure><img src=\"{}\"{dims} alt=\"{}\"><figcaption>{}</figcaption></figure>",
                    html_escape(src),
                    html_escape(caption),
                    html_escape(caption)
                );
            }
            Block::Code { lang, text } => {
                let _ = writeln!(
                    out,
                    "<pre><code class=\"language-{}\">{}</code></pre>",
                    html_escape(lang),
                    html_escape(text.trim_end())
                );
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}
