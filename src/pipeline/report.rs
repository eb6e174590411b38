//! The report a researcher reads: `report.md` and `report.html` with the
//! paper's tables and figures for this run, one paragraph of findings written
//! from the numbers, the settings and the full pipeline spec; plus
//! `analyses.json` (the numbers themselves) and the figures under `figures/`.
//!
//! # Number formatting
//!
//! Every number shown comes straight from [`Analyses`] with one fixed format,
//! so a reader (or a test) can check it against `analyses.json`:
//!
//! - accuracies, confidences, SIS sizes and transfer accuracies are fractions
//!   in `[0, 1]` in the analyses and are shown as percentages with two
//!   decimals, without the `%` sign in table cells (`0.92518` → `92.52`);
//! - a replicate statistic is `mean ± std (n)`, both in percent;
//! - a 95% interval is `mean [lo, hi] (n)`, all in percent;
//! - thresholds τ are shown as written in the spec (`f32` shortest form);
//! - counts are integers.
//!
//! The one derived column, the confidence drop, is `full − backselect`
//! computed before rounding.
//!
//! Both documents are rendered from one list of [`Block`]s so they cannot
//! disagree.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::analyses::{Analyses, MeanCi, Stat, Table1Row};
use super::figures::{self, FigureError};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serialising the analyses to {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Figure(#[from] FigureError),
}

/// What [`write_report`] wrote; all paths are inside the report directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
    /// The figure PNGs, in the order the report shows them.
    pub figures: Vec<PathBuf>,
}

/// A percentage with two decimals: the one format every fraction in the report uses.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// `mean ± std (n)` in percent.
pub fn fmt_stat(s: &Stat) -> String {
    format!("{} ± {} ({})", pct(s.mean), pct(s.std), s.n)
}

/// `mean [lo, hi] (n)` in percent.
pub fn fmt_ci(m: &MeanCi) -> String {
    format!("{} [{}, {}] ({})", pct(m.mean), pct(m.lo), pct(m.hi), m.n)
}

/// One piece of the report, rendered to Markdown or HTML.
#[derive(Clone, Debug)]
enum Block {
    Heading(u8, String),
    Paragraph(String),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Figure {
        src: String,
        caption: String,
        /// Display size in HTML (pixel-art scaling for small galleries).
        size: Option<(u32, u32)>,
    },
    Code {
        lang: String,
        text: String,
    },
}

/// What a Table 1 row or column is about, read from its name ("Full",
/// "BS 5%", "Random 5% test", "Full test", ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    Full,
    Backselect,
    Random,
    Other,
}

fn data_kind(name: &str) -> Data {
    let n = name.trim().to_ascii_lowercase();
    if n.starts_with("full") {
        Data::Full
    } else if n.starts_with("bs") || n.starts_with("backselect") || n.starts_with("backward") {
        Data::Backselect
    } else if n.starts_with("random") {
        Data::Random
    } else {
        Data::Other
    }
}

fn find_row<'a>(a: &'a Analyses, model: &str, kind: Data) -> Option<&'a Table1Row> {
    a.table1
        .iter()
        .find(|r| r.model == model && data_kind(&r.train_on) == kind)
}

fn eval_on(row: &Table1Row, kind: Data) -> Option<&Stat> {
    row.eval_on
        .iter()
        .find(|(e, _)| data_kind(e) == kind)
        .map(|(_, s)| s)
}

fn models(a: &Analyses) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let names = a
        .table1
        .iter()
        .map(|r| &r.model)
        .chain(a.confidence.iter().map(|c| &c.model))
        .chain(a.sis_size.iter().map(|c| &c.model));
    for m in names {
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    out
}

/// Gaps (in accuracy, as fractions) that change the wording of the findings.
/// 10 points between BS-trained and random-trained is "far above"; within 3
/// points is "about the same".
const FAR_ABOVE: f64 = 0.10;
const ABOUT_SAME: f64 = 0.03;

/// The plain-language findings: one paragraph, every clause conditional on
/// the numbers, every number formatted with [`pct`].
pub fn findings(a: &Analyses) -> String {
    let q = super::report_pct(a.fraction);
    let q = q.as_str();
    let mut out: Vec<String> = Vec::new();
    for model in models(a) {
        let mut s = String::new();
        let full_row = find_row(a, &model, Data::Full);
        let full_acc = full_row.and_then(|r| eval_on(r, Data::Full));
        let bs_row = find_row(a, &model, Data::Backselect);
        let rnd_row = find_row(a, &model, Data::Random);
        let bs_acc = bs_row.and_then(|r| eval_on(r, Data::Backselect));
        let rnd_acc = rnd_row.and_then(|r| eval_on(r, Data::Random));

        match (bs_acc, rnd_acc) {
            (Some(b), Some(r)) => {
                let _ = write!(
                    s,
                    "Trained on only {q}% of pixels chosen by backward selection, {model} reaches {}% test accuracy on such subsets",
                    pct(b.mean)
                );
                if let Some(f) = full_acc {
                    let _ = write!(s, " (trained and tested on full images: {}%)", pct(f.mean));
                }
                let _ = write!(
                    s,
                    "; trained on random {q}% subsets it reaches {}%. ",
                    pct(r.mean)
                );
                let gap = b.mean - r.mean;
                if gap >= FAR_ABOVE {
                    s.push_str(
                        "The backward-selection subsets therefore carry real, learnable signal that no person would recognise in so few pixels: the sign of overinterpretation the paper reports. ",
                    );
                } else if gap > ABOUT_SAME {
                    s.push_str(
                        "The backward-selection subsets carry somewhat more learnable signal than random ones, but the margin is small, so this run gives only weak evidence of overinterpretation. ",
                    );
                } else if gap >= -ABOUT_SAME {
                    s.push_str(
                        "Backward-selection and random subsets are about equally learnable, so this run shows no evidence that the selected pixels carry special signal. ",
                    );
                } else {
                    s.push_str(
                        "The backward-selection subsets are less learnable than random ones, so this run shows no evidence of overinterpretation (the selected pixels do not carry more signal than chance pixels). ",
                    );
                }
            }
            _ => {
                if let Some(f) = full_acc {
                    let _ = write!(
                        s,
                        "{model} reaches {}% test accuracy on full images. ",
                        pct(f.mean)
                    );
                }
            }
        }

        if let Some(c) = a.confidence.iter().find(|c| c.model == model) {
            let orig_bs = full_row.and_then(|r| eval_on(r, Data::Backselect));
            let _ = write!(
                s,
                "The original model's mean confidence is {}% on full test images and {}% on its own {q}% backward-selection subsets (all other pixels masked)",
                pct(c.full),
                pct(c.backselect)
            );
            if let Some(o) = orig_bs {
                let _ = write!(s, ", where its accuracy is {}%", pct(o.mean));
            }
            let drop = c.full - c.backselect;
            if drop <= 0.05 {
                s.push_str(": its confidence barely drops although 95% of the image is gone");
            } else if c.backselect >= 0.5 {
                s.push_str(": its confidence stays high although most of the image is gone");
            } else {
                s.push_str(": its confidence drops substantially without the rest of the image");
            }
            let _ = write!(s, "; on random {q}% subsets it is {}%. ", pct(c.random));
        }

        if let Some(cw) = a.correct_vs_wrong.iter().find(|c| c.model == model) {
            if let (Some(c), Some(w)) = (&cw.correct, &cw.wrong) {
                let _ = write!(
                    s,
                    "At threshold {}, correctly classified images need a mean SIS of {}% of the pixels and misclassified ones {}%",
                    cw.threshold,
                    pct(c.mean),
                    pct(w.mean)
                );
                if c.lo > w.hi {
                    s.push_str(
                        " (95% intervals do not overlap: larger SIS go with correct predictions, as in the paper's Figure 4). ",
                    );
                } else if w.lo > c.hi {
                    s.push_str(
                        " (95% intervals do not overlap: here misclassified images need larger SIS). ",
                    );
                } else {
                    s.push_str(" (95% intervals overlap: no clear difference). ");
                }
            }
        }
        if !s.is_empty() {
            out.push(s.trim_end().to_string());
        }
    }

    if let Some(t) = &a.transfer {
        let (mut diag, mut off) = (Vec::new(), Vec::new());
        for (i, src) in t.sources.iter().enumerate() {
            for (j, ev) in t.evaluators.iter().enumerate() {
                if let Some(&v) = t.accuracy.get(i).and_then(|r| r.get(j)) {
                    if src == ev {
                        diag.push(v);
                    } else {
                        off.push(v);
                    }
                }
            }
        }
        if !diag.is_empty() && !off.is_empty() {
            let md = diag.iter().sum::<f64>() / diag.len() as f64;
            let mo = off.iter().sum::<f64>() / off.len() as f64;
            let verdict = if md - mo >= FAR_ABOVE {
                "the subsets are largely specific to the model that selected them"
            } else {
                "the subsets transfer across models, so the signal they carry is a property of the data, not of one model"
            };
            out.push(format!(
                "Across models, a model classifies its own backward-selection subsets with {}% mean accuracy and other models' with {}%: {verdict}.",
                pct(md),
                pct(mo)
            ));
        }
    }
    if out.is_empty() {
        return "The analyses hold no accuracy or confidence numbers yet, so there are no findings to report.".into();
    }
    out.join(" ")
}

fn build_blocks(a: &Analyses, dir: &Path, figs: &[(String, String)]) -> Vec<Block> {
    let mut b = Vec::new();
    let q = super::report_pct(a.fraction);
    b.push(Block::Heading(
        1,
        format!("Overinterpretation report: {}", a.name),
    ));
    b.push(Block::Paragraph(format!(
        "Dataset {} ({} training images, {} test images); subset fraction {}% of pixels. Accuracies, confidences and SIS sizes are percentages with two decimals; ± is one standard deviation over replicates, (n) the number of replicates or images.",
        a.dataset, a.train_images, a.test_images, q
    )));
    b.push(Block::Heading(2, "Findings".into()));
    b.push(Block::Paragraph(findings(a)));

    // Table 1 analog.
    let mut evals: Vec<String> = Vec::new();
    for r in &a.table1 {
        for (e, _) in &r.eval_on {
            if !evals.contains(e) {
                evals.push(e.clone());
            }
        }
    }
    if !a.table1.is_empty() {
        b.push(Block::Heading(
            2,
            "Accuracy by training and evaluation data (Table 1 analog)".into(),
        ));
        b.push(Block::Paragraph(format!(
            "Test accuracy (%) as mean ± std (number of replicate models). \"BS\" subsets keep the {q}% of pixels that backward selection on the original model kept; \"Random\" subsets keep {q}% of pixels chosen at random; all other pixels are masked."
        )));
        let mut header = vec!["Model".to_string(), "Trained on".to_string()];
        header.extend(evals.iter().map(|e| format!("Evaluated on {e}")));
        let rows = a
            .table1
            .iter()
            .map(|r| {
                let mut row = vec![r.model.clone(), r.train_on.clone()];
                row.extend(evals.iter().map(|e| {
                    r.eval_on
                        .iter()
                        .find(|(n, _)| n == e)
                        .map_or("—".to_string(), |(_, s)| fmt_stat(s))
                }));
                row
            })
            .collect();
        b.push(Block::Table { header, rows });
    }

    if !a.confidence.is_empty() {
        b.push(Block::Heading(2, "Confidence of the original model".into()));
        b.push(Block::Paragraph(
            "Mean confidence (%) of the model trained on full images in its predicted class, on full test images and on their subsets. The drop is full − BS.".into(),
        ));
        b.push(Block::Table {
            header: vec![
                "Model".into(),
                "Full images".into(),
                format!("BS {q}% subsets"),
                format!("Random {q}% subsets"),
                "Drop (full − BS)".into(),
            ],
            rows: a
                .confidence
                .iter()
                .map(|c| {
                    vec![
                        c.model.clone(),
                        pct(c.full),
                        pct(c.backselect),
                        pct(c.random),
                        pct(c.full - c.backselect),
                    ]
                })
                .collect(),
        });
    }

    if !a.sis_size.is_empty() {
        b.push(Block::Heading(
            2,
            "SIS size vs. threshold (Figure 5 analog)".into(),
        ));
        b.push(Block::Paragraph(
            "Mean sufficient-input-subset size (% of the image's pixels) at each threshold τ, over the test images the model predicts with confidence ≥ τ; (n) is how many such images there are.".into(),
        ));
        let mut taus: Vec<f32> = Vec::new();
        for c in &a.sis_size {
            for &t in &c.thresholds {
                if !taus.iter().any(|&u| u.to_bits() == t.to_bits()) {
                    taus.push(t);
                }
            }
        }
        taus.sort_by(|x, y| x.total_cmp(y));
        let mut header = vec!["Threshold τ".to_string()];
        header.extend(a.sis_size.iter().map(|c| c.model.clone()));
        let rows = taus
            .iter()
            .map(|&t| {
                let mut row = vec![format!("{t}")];
                row.extend(a.sis_size.iter().map(|c| {
                    c.thresholds
                        .iter()
                        .position(|&u| u.to_bits() == t.to_bits())
                        .and_then(|i| {
                            Some(format!(
                                "{} ({})",
                                pct(*c.mean_fraction.get(i)?),
                                c.images_with_sis.get(i)?
                            ))
                        })
                        .unwrap_or_else(|| "—".into())
                }));
                row
            })
            .collect();
        b.push(Block::Table { header, rows });
    }

    if !a.correct_vs_wrong.is_empty() {
        b.push(Block::Heading(
            2,
            "SIS size of correct vs. wrong predictions (Figure 4 analog)".into(),
        ));
        b.push(Block::Paragraph(
            "Mean SIS size (% of pixels) [95% confidence interval] (number of images) of correctly and wrongly classified test images.".into(),
        ));
        b.push(Block::Table {
            header: vec![
                "Model".into(),
                "Threshold τ".into(),
                "Correctly classified".into(),
                "Misclassified".into(),
            ],
            rows: a
                .correct_vs_wrong
                .iter()
                .map(|c| {
                    let cell = |m: &Option<MeanCi>| m.as_ref().map_or("—".into(), fmt_ci);
                    vec![
                        c.model.clone(),
                        format!("{}", c.threshold),
                        cell(&c.correct),
                        cell(&c.wrong),
                    ]
                })
                .collect(),
        });
    }

    if let Some(t) = &a.transfer {
        b.push(Block::Heading(
            2,
            "Transfer of backselect subsets between models (§4.1)".into(),
        ));
        b.push(Block::Paragraph(
            "Test accuracy (%) of the model in each column on the backselect test subsets selected by the model in each row.".into(),
        ));
        let mut header = vec!["Subsets from \\ evaluated by".to_string()];
        header.extend(t.evaluators.iter().cloned());
        let rows = t
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut row = vec![s.clone()];
                row.extend((0..t.evaluators.len()).map(|j| {
                    t.accuracy
                        .get(i)
                        .and_then(|r| r.get(j))
                        .map_or("—".into(), |&v| pct(v))
                }));
                row
            })
            .collect();
        b.push(Block::Table { header, rows });
    }

    b.push(Block::Heading(2, "Figures".into()));
    for (src, caption) in figs {
        b.push(Block::Figure {
            src: src.clone(),
            caption: caption.clone(),
            size: None,
        });
    }

    if !a.galleries.is_empty() {
        b.push(Block::Heading(2, "SIS galleries (Figure 1 analog)".into()));
        for g in &a.galleries {
            let rows: Vec<String> = g
                .rows
                .iter()
                .map(|(i, y, p)| format!("image {i} (label {y}, predicted {p})"))
                .collect();
            b.push(Block::Figure {
                size: gallery_size(&dir.join(&g.png)),
                src: g.png.clone(),
                caption: format!(
                    "{} at threshold {}: each row shows the original test image, the location of its SIS, and the SIS alone (all other pixels masked), which the model still classifies with confidence ≥ {}. Rows: {}.",
                    g.model,
                    g.threshold,
                    g.threshold,
                    rows.join("; ")
                ),
            });
        }
    }

    b.push(Block::Heading(2, "Settings".into()));
    let mut rows = vec![
        vec!["dataset".to_string(), a.dataset.clone()],
        vec!["training images".into(), a.train_images.to_string()],
        vec!["test images".into(), a.test_images.to_string()],
        vec!["subset fraction".into(), format!("{q}%")],
    ];
    rows.extend(a.settings.iter().map(|(k, v)| vec![k.clone(), v.clone()]));
    b.push(Block::Table {
        header: vec!["Setting".into(), "Value".into()],
        rows,
    });
    b.push(Block::Heading(2, "Configuration".into()));
    b.push(Block::Paragraph(
        "The full pipeline spec that produced this report:".into(),
    ));
    b.push(Block::Code {
        lang: "toml".into(),
        text: a.spec.clone(),
    });
    b
}

/// Display size for a gallery PNG: galleries of small images (28×28 panels)
/// are scaled up by a whole factor to about 480 px wide, at most 1600 px
/// tall, drawn pixelated so no pixel is blurred; `None` (natural size) if the
/// file cannot be read.
fn gallery_size(path: &Path) -> Option<(u32, u32)> {
    let file = fs::File::open(path).ok()?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .ok()?;
    let (w, h) = (reader.info().width.max(1), reader.info().height.max(1));
    let factor = (480 / w).min(1600 / h).max(1);
    Some((w * factor, h * factor))
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn to_markdown(blocks: &[Block]) -> String {
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

fn html_escape(s: &str) -> String {
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

fn to_html(title: &str, blocks: &[Block]) -> String {
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

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `analyses.json`, the figures under `figures/`, `report.md` and
/// `report.html` into `dir` (created if missing). Galleries are referenced by
/// the relative paths in `analyses.galleries`; they must already be in `dir`.
pub fn write_report(analyses: &Analyses, dir: &Path) -> Result<ReportFiles, ReportError> {
    let fig_dir = dir.join("figures");
    fs::create_dir_all(&fig_dir).map_err(|source| ReportError::Io {
        path: fig_dir.clone(),
        source,
    })?;
    let json = dir.join("analyses.json");
    let text = serde_json::to_string_pretty(analyses).map_err(|source| ReportError::Json {
        path: json.clone(),
        source,
    })?;
    write_file(&json, &text)?;

    let q = pct(analyses.fraction);
    let q = q.trim_end_matches('0').trim_end_matches('.').to_string();
    // (relative path, caption) of each figure drawn.
    let mut figs: Vec<(String, String)> = Vec::new();
    let mut paths = Vec::new();
    let mut add = |name: &str, caption: String| {
        let p = fig_dir.join(name);
        figs.push((format!("figures/{name}"), caption));
        paths.push(p.clone());
        p
    };
    if !analyses.table1.is_empty() {
        let p = add(
            "accuracy.png",
            format!("Test accuracy of each model by the data it was trained on (groups) and evaluated on (bars): full images, backward-selection (BS) {q}% subsets and random {q}% subsets. Error bars: ±1 standard deviation over replicate models (none for a single replicate). Numbers in the Table 1 analog above."),
        );
        figures::table1_bars(&analyses.table1, &p)?;
    }
    if !analyses.sis_size.is_empty() {
        let p = add(
            "sis_size_vs_threshold.png",
            "Mean SIS size (% of the image's pixels) as the SIS threshold τ varies, over test images predicted with confidence ≥ τ (cf. the paper's Figure 5). A small SIS at a high threshold means the model is confident from very few pixels.".into(),
        );
        figures::sis_size_curves(&analyses.sis_size, &p)?;
    }
    if !analyses.correct_vs_wrong.is_empty() {
        let p = add(
            "sis_size_correct_vs_wrong.png",
            "Mean SIS size of correctly (blue) and wrongly (red) classified test images; error bars are 95% confidence intervals of the mean (cf. the paper's Figure 4).".into(),
        );
        figures::correct_vs_wrong(&analyses.correct_vs_wrong, &p)?;
    }
    if !analyses.heatmaps.is_empty() {
        let p = add(
            "pixel_heatmaps.png",
            format!("How often each pixel location is among the {q}% kept by backward selection, over all test images (first column) and over test images predicted as each class (n = images). One colour scale for all panels (cf. the paper's Figure 2). Mass on the borders or background, away from the object, is the pathology the paper describes."),
        );
        figures::heatmap_grid(&analyses.heatmaps, &p)?;
    }
    if let Some(t) = &analyses.transfer {
        let p = add(
            "transfer_matrix.png",
            "Accuracy (%) of each evaluating model (columns) on the backward-selection test subsets selected by each source model (rows); the diagonal is a model on its own subsets.".into(),
        );
        figures::transfer_matrix(t, &p)?;
    }

    let blocks = build_blocks(analyses, dir, &figs);
    let markdown = dir.join("report.md");
    write_file(&markdown, &to_markdown(&blocks))?;
    let html = dir.join("report.html");
    write_file(
        &html,
        &to_html(
            &format!("Overinterpretation report: {}", analyses.name),
            &blocks,
        ),
    )?;
    Ok(ReportFiles {
        markdown,
        html,
        json,
        figures: paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::analyses::{
        ConfidenceDrop, CorrectVsWrong, Gallery, Heatmap, SisSizeCurve, TransferMatrix,
    };
    use std::collections::HashMap;

    fn stat(mean: f64, std: f64, n: usize) -> Stat {
        Stat { mean, std, n }
    }

    fn evals(cols: &[(&str, Stat)]) -> Vec<(String, Stat)> {
        cols.iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect()
    }

    /// A 28×28 heatmap: `base` everywhere, 1.0 in a 3×3 block at (row, col).
    fn heatmap(model: &str, class: Option<i64>, row: usize, col: usize, base: f32) -> Heatmap {
        let mut values = vec![base; 28 * 28];
        for r in row..row + 3 {
            for c in col..col + 3 {
                values[r * 28 + c] = 1.0;
            }
        }
        Heatmap {
            model: model.into(),
            class,
            height: 28,
            width: 28,
            values,
            images: 100 + class.unwrap_or(0) as usize,
        }
    }

    /// Two models, each with full / BS / random training rows, SIS curves,
    /// correct-vs-wrong, heatmaps for all images and 3 classes, a 2×2
    /// transfer matrix and one gallery.
    fn sample() -> Analyses {
        let mut table1 = Vec::new();
        for (m, base) in [("small-cnn", 0.0), ("wide-cnn", 0.02)] {
            table1.push(Table1Row {
                model: m.into(),
                train_on: "Full".into(),
                eval_on: evals(&[
                    ("Full test", stat(0.91234 + base, 0.00456, 3)),
                    ("BS 5% test", stat(0.88765 + base, 0.0, 1)),
                    ("Random 5% test", stat(0.10017, 0.00031, 3)),
                ]),
            });
            table1.push(Table1Row {
                model: m.into(),
                train_on: "BS 5%".into(),
                eval_on: evals(&[("BS 5% test", stat(0.84129 + base, 0.01234, 5))]),
            });
            table1.push(Table1Row {
                model: m.into(),
                train_on: "Random 5%".into(),
                eval_on: evals(&[("Random 5% test", stat(0.30996, 0.02005, 5))]),
            });
        }
        Analyses {
            name: "fashion-demo".into(),
            dataset: "fashion-mnist?limit=10000".into(),
            train_images: 10000,
            test_images: 2000,
            fraction: 0.05,
            settings: vec![
                ("k (pixels removed per step)".into(), "8".into()),
                ("epochs".into(), "3".into()),
                ("replicates".into(), "5".into()),
            ],
            table1,
            confidence: vec![
                ConfidenceDrop {
                    model: "small-cnn".into(),
                    full: 0.93111,
                    backselect: 0.90555,
                    random: 0.31234,
                },
                ConfidenceDrop {
                    model: "wide-cnn".into(),
                    full: 0.95,
                    backselect: 0.41,
                    random: 0.2,
                },
            ],
            sis_size: vec![
                SisSizeCurve {
                    model: "small-cnn".into(),
                    thresholds: vec![0.5, 0.7, 0.9, 0.99],
                    mean_fraction: vec![0.0123, 0.0234, 0.0456, 0.0891],
                    images_with_sis: vec![1990, 1900, 1700, 1200],
                },
                SisSizeCurve {
                    model: "wide-cnn".into(),
                    thresholds: vec![0.5, 0.7, 0.9, 0.99],
                    mean_fraction: vec![0.02, 0.031, 0.0512, 0.12345],
                    images_with_sis: vec![1995, 1910, 1750, 1300],
                },
            ],
            correct_vs_wrong: vec![
                CorrectVsWrong {
                    model: "small-cnn".into(),
                    threshold: 0.9,
                    correct: Some(MeanCi {
                        mean: 0.0512,
                        lo: 0.0498,
                        hi: 0.0526,
                        n: 1650,
                    }),
                    wrong: Some(MeanCi {
                        mean: 0.0311,
                        lo: 0.0280,
                        hi: 0.0342,
                        n: 50,
                    }),
                },
                CorrectVsWrong {
                    model: "wide-cnn".into(),
                    threshold: 0.9,
                    correct: Some(MeanCi {
                        mean: 0.06,
                        lo: 0.055,
                        hi: 0.065,
                        n: 1700,
                    }),
                    wrong: None,
                },
            ],
            heatmaps: vec![
                heatmap("small-cnn", None, 5, 20, 0.1),
                heatmap("small-cnn", Some(0), 0, 0, 0.05),
                heatmap("small-cnn", Some(1), 12, 12, 0.05),
                heatmap("small-cnn", Some(2), 25, 25, 0.05),
                heatmap("wide-cnn", None, 12, 0, 0.2),
                heatmap("wide-cnn", Some(0), 0, 25, 0.0),
                heatmap("wide-cnn", Some(1), 25, 0, 0.0),
                heatmap("wide-cnn", Some(2), 5, 5, 0.0),
            ],
            transfer: Some(TransferMatrix {
                sources: vec!["small-cnn".into(), "wide-cnn".into()],
                evaluators: vec!["small-cnn".into(), "wide-cnn".into()],
                accuracy: vec![vec![0.88765, 0.4012], vec![0.3333, 0.90765]],
            }),
            galleries: vec![Gallery {
                model: "small-cnn".into(),
                threshold: 0.9,
                png: "galleries/small-cnn.png".into(),
                rows: vec![(17, 3, 3), (42, 7, 7)],
            }],
            spec: "name = \"fashion-demo\"\n[dataset]\nspec = \"fashion-mnist?limit=10000\"\n"
                .into(),
        }
    }

    /// Decodes an RGB PNG: (width, height, pixels).
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// Parses report.md's tables, keyed by the `## ` heading above each.
    fn md_tables(md: &str) -> HashMap<String, Vec<Vec<String>>> {
        let mut out: HashMap<String, Vec<Vec<String>>> = HashMap::new();
        let mut heading = String::new();
        for line in md.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                heading = h.to_string();
            } else if line.starts_with('|') && !line.starts_with("|---") {
                let cells = line
                    .trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_string())
                    .collect();
                out.entry(heading.clone()).or_default().push(cells);
            }
        }
        out
    }

    /// Asserts a report cell (percent, two decimals) shows fraction `x`.
    fn assert_pct(cell: &str, x: f64) {
        let v: f64 = cell
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {cell:?}"));
        assert!((v - 100.0 * x).abs() <= 0.005 + 1e-9, "{cell} shows {x}");
        assert_eq!(cell.split('.').nth(1).map(str::len), Some(2), "{cell}");
    }

    fn table<'a>(t: &'a HashMap<String, Vec<Vec<String>>>, prefix: &str) -> &'a Vec<Vec<String>> {
        t.iter()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no table under {prefix}"))
    }

    fn write_sample(a: &Analyses) -> (tempfile::TempDir, ReportFiles) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("galleries")).unwrap();
        // A tiny gallery stand-in: 3 panels of 28×28 with a bright square.
        let (w, h) = (84u32, 28u32);
        let mut rgb = vec![30u8; (w * h * 3) as usize];
        for y in 10..18 {
            for x in 38..46 {
                let i = ((y * w + x) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&[230, 40, 40]);
            }
        }
        figures_test_png(&dir.path().join("galleries/small-cnn.png"), w, h, &rgb);
        let files = write_report(a, dir.path()).unwrap();
        (dir, files)
    }

    fn figures_test_png(path: &Path, w: u32, h: u32, rgb: &[u8]) {
        let mut e = png::Encoder::new(fs::File::create(path).unwrap(), w, h);
        e.set_color(png::ColorType::Rgb);
        e.set_depth(png::BitDepth::Eight);
        e.write_header().unwrap().write_image_data(rgb).unwrap();
    }

    #[test]
    fn writes_all_files_and_figures_decode_with_content() {
        let a = sample();
        let (dir, files) = write_sample(&a);
        for p in [&files.markdown, &files.html, &files.json] {
            assert!(p.is_file(), "{}", p.display());
        }
        // Exact: serde_json's float_roundtrip feature parses the shortest
        // representation back to the same f64.
        let back: Analyses =
            serde_json::from_str(&fs::read_to_string(&files.json).unwrap()).unwrap();
        assert_eq!(back, a);
        // Expected sizes from each figure's layout (hand-computed):
        // accuracy: 6 groups → max(190·6+160, 800) = 1300 × 600;
        // curves 900 × 560; correct-vs-wrong: max(260·2+200, 700) = 720 × 560;
        // heatmaps: 4 columns → cell = clamp(1100/4, 72, 160) = 160,
        //   150 + 4·170 + 130 = 960 wide, 60 + 2·(160+36+10) + 20 = 492 tall;
        // transfer: cell = clamp(700/2, 70, 150) = 150, 200+300+160 = 660 × 110+300+50 = 460.
        let expected = [
            ("accuracy.png", 1300, 600),
            ("sis_size_vs_threshold.png", 900, 560),
            ("sis_size_correct_vs_wrong.png", 720, 560),
            ("pixel_heatmaps.png", 960, 492),
            ("transfer_matrix.png", 660, 460),
        ];
        assert_eq!(files.figures.len(), expected.len());
        for (p, (name, w, h)) in files.figures.iter().zip(expected) {
            assert_eq!(p.file_name().unwrap(), name);
            let (pw, ph, px) = decode(p);
            assert_eq!((pw, ph), (w, h), "{name}");
            let non_white = px.chunks(3).filter(|c| c != &[255, 255, 255]).count();
            let frac = non_white as f64 / (pw * ph) as f64;
            assert!(frac > 0.02, "{name} is nearly blank: {frac}");
            let mut colours: Vec<&[u8]> = px.chunks(3).collect();
            colours.sort();
            colours.dedup();
            assert!(
                colours.len() > 20,
                "{name} has only {} colours",
                colours.len()
            );
        }
        // The planted hot block of small-cnn's overall heatmap (rows 5..8,
        // cols 20..23, value 1.0 = the maximum) is drawn at the top of viridis
        // (253, 231, 37); the panel starts at x = 150, y = 60 + 36 = 96 and one
        // source pixel is 160/28 ≈ 5.71 px, so pixel (21, 6) → (150+122, 96+37).
        let (w, _, px) = decode(&dir.path().join("figures/pixel_heatmaps.png"));
        let at = |x: u32, y: u32| &px[((y * w + x) * 3) as usize..((y * w + x) * 3 + 3) as usize];
        assert_eq!(at(150 + 122, 96 + 37), &[253, 231, 37]);
        // A background pixel there (value 0.1 of max 1.0) is dark.
        assert!(at(150 + 10, 96 + 150)[0] < 100);

        let md = fs::read_to_string(&files.markdown).unwrap();
        let html = fs::read_to_string(&files.html).unwrap();
        for f in [
            "figures/accuracy.png",
            "figures/pixel_heatmaps.png",
            "galleries/small-cnn.png",
        ] {
            assert!(md.contains(&format!("]({f})")), "{f} missing in md");
            assert!(
                html.contains(&format!("src=\"{f}\"")),
                "{f} missing in html"
            );
        }
        // The 84×28 gallery is shown 5× (480/84 = 5) and pixelated.
        assert!(html.contains("src=\"galleries/small-cnn.png\" width=\"420\" height=\"140\""));
        assert!(md.contains("```toml\nname = \"fashion-demo\""));
        assert!(html.contains("name = &quot;fashion-demo&quot;"));
    }

    #[test]
    fn every_table_number_round_trips_to_the_analyses() {
        let a = sample();
        let (_dir, files) = write_sample(&a);
        let md = fs::read_to_string(&files.markdown).unwrap();
        let t = md_tables(&md);

        // Table 1: "mean ± std (n)" per evaluation column.
        let t1 = table(&t, "Accuracy by training");
        let header = &t1[0];
        assert_eq!(t1.len(), a.table1.len() + 1);
        let mut checked = 0;
        for r in &a.table1 {
            let row = t1
                .iter()
                .find(|c| c[0] == r.model && c[1] == r.train_on)
                .unwrap_or_else(|| panic!("no row {} {}", r.model, r.train_on));
            for (e, s) in &r.eval_on {
                let j = header
                    .iter()
                    .position(|h| h == &format!("Evaluated on {e}"))
                    .unwrap();
                let (mean, rest) = row[j].split_once(" ± ").unwrap();
                let (std, n) = rest.split_once(" (").unwrap();
                assert_pct(mean, s.mean);
                assert_pct(std, s.std);
                assert_eq!(n.trim_end_matches(')').parse::<usize>().unwrap(), s.n);
                checked += 1;
            }
            // Columns this row has no number for show a dash, not a number.
            let shown = row[2..].iter().filter(|c| c.as_str() != "—").count();
            assert_eq!(shown, r.eval_on.len());
        }
        assert_eq!(checked, 10);

        let conf = table(&t, "Confidence");
        for c in &a.confidence {
            let row = conf.iter().find(|r| r[0] == c.model).unwrap();
            assert_pct(&row[1], c.full);
            assert_pct(&row[2], c.backselect);
            assert_pct(&row[3], c.random);
            assert_pct(&row[4], c.full - c.backselect);
        }

        let sis = table(&t, "SIS size vs. threshold");
        for (k, c) in a.sis_size.iter().enumerate() {
            for (i, &tau) in c.thresholds.iter().enumerate() {
                let row = sis.iter().find(|r| r[0] == format!("{tau}")).unwrap();
                let (m, n) = row[k + 1].split_once(" (").unwrap();
                assert_pct(m, c.mean_fraction[i]);
                assert_eq!(n.trim_end_matches(')'), c.images_with_sis[i].to_string());
            }
        }

        let cvw = table(&t, "SIS size of correct");
        for c in &a.correct_vs_wrong {
            let row = cvw.iter().find(|r| r[0] == c.model).unwrap();
            assert_eq!(row[1], format!("{}", c.threshold));
            for (cell, m) in [(&row[2], &c.correct), (&row[3], &c.wrong)] {
                match m {
                    None => assert_eq!(cell, "—"),
                    Some(m) => {
                        let (mean, rest) = cell.split_once(" [").unwrap();
                        let (lo, rest) = rest.split_once(", ").unwrap();
                        let (hi, n) = rest.split_once("] (").unwrap();
                        assert_pct(mean, m.mean);
                        assert_pct(lo, m.lo);
                        assert_pct(hi, m.hi);
                        assert_eq!(n.trim_end_matches(')'), m.n.to_string());
                    }
                }
            }
        }

        let tr = table(&t, "Transfer");
        let tm = a.transfer.as_ref().unwrap();
        for (i, s) in tm.sources.iter().enumerate() {
            let row = tr.iter().find(|r| &r[0] == s).unwrap();
            for j in 0..tm.evaluators.len() {
                assert_eq!(tr[0][j + 1], tm.evaluators[j]);
                assert_pct(&row[j + 1], tm.accuracy[i][j]);
            }
        }

        let settings = table(&t, "Settings");
        assert!(settings.iter().any(|r| r[0] == "epochs" && r[1] == "3"));
        assert!(settings
            .iter()
            .any(|r| r[0] == "test images" && r[1] == "2000"));
    }

    #[test]
    fn every_findings_number_is_an_analyses_number() {
        let a = sample();
        let text = findings(&a);
        // Values the findings may quote, as fractions: every table mean and
        // confidence, and the transfer diagonal/off-diagonal means computed here.
        let mut allowed: Vec<f64> = a
            .table1
            .iter()
            .flat_map(|r| r.eval_on.iter().map(|(_, s)| s.mean))
            .collect();
        for c in &a.confidence {
            allowed.extend([c.full, c.backselect, c.random]);
        }
        for c in &a.correct_vs_wrong {
            allowed.extend(c.correct.iter().chain(&c.wrong).map(|m| m.mean));
        }
        allowed.push((0.88765 + 0.90765) / 2.0);
        allowed.push((0.4012 + 0.3333) / 2.0);
        let mut seen = 0;
        for word in text.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
            let word = word.trim_matches('.');
            if word.split('.').nth(1).map(str::len) == Some(2) {
                let v: f64 = word.parse().unwrap();
                assert!(
                    allowed
                        .iter()
                        .any(|x| (v - 100.0 * x).abs() <= 0.005 + 1e-9),
                    "{word} in findings is not an analyses number:\n{text}"
                );
                seen += 1;
            }
        }
        assert!(seen >= 10, "{text}");
        // The example wording from the data.
        assert!(
            text.contains("small-cnn reaches 84.13% test accuracy"),
            "{text}"
        );
        assert!(
            text.contains("trained on random 5% subsets it reaches 31.00%"),
            "{text}"
        );
    }

    #[test]
    fn findings_wording_follows_the_numbers() {
        let a = sample();
        let far = findings(&a);
        assert!(far.contains("carry real, learnable signal"), "{far}");
        // small-cnn keeps its confidence (93.11 → 90.56), wide-cnn loses it (95 → 41).
        assert!(far.contains("barely drops"), "{far}");
        assert!(far.contains("drops substantially"), "{far}");
        assert!(
            far.contains("larger SIS go with correct predictions"),
            "{far}"
        );
        assert!(
            far.contains("largely specific to the model that selected them"),
            "{far}"
        );

        // BS-trained below random-trained: no evidence of overinterpretation.
        let mut b = a.clone();
        for r in &mut b.table1 {
            if r.train_on == "BS 5%" {
                r.eval_on[0].1.mean = 0.2;
            }
        }
        let below = findings(&b);
        assert_ne!(below, far);
        assert!(below.contains("less learnable than random ones"), "{below}");
        assert!(!below.contains("carry real, learnable signal"), "{below}");

        // Within 3 points: "about equally learnable".
        let mut c = a.clone();
        for r in &mut c.table1 {
            if r.train_on == "BS 5%" {
                r.eval_on[0].1.mean = 0.32;
            }
        }
        assert!(findings(&c).contains("about equally learnable"));

        // Subsets that transfer: off-diagonal close to diagonal.
        let mut d = a.clone();
        d.transfer.as_mut().unwrap().accuracy = vec![vec![0.88, 0.86], vec![0.85, 0.9]];
        assert!(findings(&d).contains("the subsets transfer across models"));
    }

    #[test]
    fn markdown_escapes_pipes_and_html_escapes_markup() {
        let mut a = sample();
        a.name = "a|b <script>".into();
        a.settings.push(("note".into(), "x | y".into()));
        let (_dir, files) = write_sample(&a);
        let md = fs::read_to_string(&files.markdown).unwrap();
        assert!(md.contains("| note | x \\| y |"));
        let html = fs::read_to_string(&files.html).unwrap();
        assert!(!html.contains("<script>"));
        assert!(html.contains("a|b &lt;script&gt;"));
    }

    /// Writes the sample report to `$OVERINTERP_SAMPLE_REPORT` for looking at
    /// it in a browser (`cargo test --release --lib sample_report -- --ignored`).
    #[test]
    #[ignore]
    fn sample_report() {
        let Ok(out) = std::env::var("OVERINTERP_SAMPLE_REPORT") else {
            return;
        };
        let (dir, files) = write_sample(&sample());
        let out = Path::new(&out);
        fs::create_dir_all(out.join("figures")).unwrap();
        fs::create_dir_all(out.join("galleries")).unwrap();
        for p in files
            .figures
            .iter()
            .chain([&files.markdown, &files.html, &files.json])
        {
            let rel = p.strip_prefix(dir.path()).unwrap();
            fs::copy(p, out.join(rel)).unwrap();
        }
        fs::copy(
            dir.path().join("galleries/small-cnn.png"),
            out.join("galleries/small-cnn.png"),
        )
        .unwrap();
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let err = write_report(&sample(), &file).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
