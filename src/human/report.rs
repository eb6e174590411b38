//! `overinterp human report`: the human study's section — Table S3 analog, Figure
//! S7 analog, humans by choosing model, models beside humans on the same images,
//! confusion matrices, response times, per participant — as markdown and HTML
//! rendered from one block list (so they cannot disagree), plus `human.json` with
//! every number ([`HumanAnalysis`]).
//!
//! Number formats: accuracies are percentages with two decimals without the `%`
//! sign in table cells (`0.4` → `40.00`); a participant statistic is
//! `mean ± std`; R², slope and intercept have three decimals; times are seconds
//! with two decimals; counts are integers.
//!
//! The pipeline report appends the same section ([`append_to_pipeline_report`])
//! when its spec names a study with responses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::analysis::{analyse, HumanAnalysis};
use super::db::{AnswerDb, DB_FILE};
use super::manifest::StudyManifest;
use super::pages::{esc, pct as frac_pct};
use super::{figure, HumanError};

/// File name of the figure.
pub const FIGURE_FILE: &str = "human-accuracy.png";
/// File name of the numbers.
pub const JSON_FILE: &str = "human.json";

/// A percentage with two decimals (`0.4` → `40.00`).
pub fn pct(x: f64) -> String {
    format!("{:.2}", x * 100.0)
}

fn opt_pct(x: Option<f64>) -> String {
    x.map(pct).unwrap_or_else(|| "–".into())
}

fn pooled(correct: u64, answers: u64) -> String {
    if answers == 0 {
        "–".into()
    } else {
        pct(correct as f64 / answers as f64)
    }
}

/// One piece of the section.
enum Block {
    Heading(String),
    Para(String),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Figure {
        src: String,
        caption: String,
    },
}

/// The study and its answers, analysed.
pub fn load(study: &Path) -> Result<(StudyManifest, HumanAnalysis), HumanError> {
    let manifest = StudyManifest::load(study)?;
    let answers = match AnswerDb::open_read_only(&study.join(DB_FILE))? {
        Some(db) => db.answers()?,
        None => Vec::new(),
    };
    let analysis = analyse(&manifest, &answers);
    Ok((manifest, analysis))
}

fn blocks(study: &Path, m: &StudyManifest, a: &HumanAnalysis, figure_src: &str) -> Vec<Block> {
    let mut out = vec![Block::Heading("Human classification benchmark".into())];
    let per_store: Vec<String> = (0..m.stores.len())
        .map(|s| {
            let n = m.images.iter().filter(|i| i.store == s).count();
            format!("{} ({n} images)", m.store_name(s))
        })
        .collect();
    out.push(Block::Para(format!(
        "Study `{}`: {} images of {} ({} per class over {} classes, each correctly classified \
         with confidence ≥ {} by the model that chose its subsets), each shown at {} of its \
         pixels kept by backward selection, in that order. Subsets chosen by: {}. {} \
         participant(s) gave {} answer(s).",
        study.display(),
        m.images.len(),
        m.dataset,
        m.per_class,
        m.classes.len(),
        m.min_confidence,
        m.fractions
            .iter()
            .map(|q| format!("{}%", frac_pct(*q)))
            .collect::<Vec<_>>()
            .join(", "),
        per_store.join("; "),
        a.participants.len(),
        a.answers
    )));
    out.push(Block::Heading(
        "Human accuracy by pixels kept (Table S3 analog)".into(),
    ));
    out.push(Block::Table {
        header: vec![
            "pixels kept (%)".into(),
            "participants".into(),
            "answers".into(),
            "accuracy (%), mean ± std over participants".into(),
        ],
        rows: a
            .table
            .iter()
            .map(|r| {
                vec![
                    frac_pct(r.fraction),
                    r.participants.to_string(),
                    r.answers.to_string(),
                    if r.participants > 0 {
                        format!("{} ± {}", pct(r.mean), pct(r.std))
                    } else {
                        "–".into()
                    },
                ]
            })
            .collect(),
    });
    out.push(Block::Para(match &a.fit {
        Some(f) => format!(
            "Least squares over the {} per-participant points: accuracy = {:.3} + {:.3} · q \
             (q = fraction of pixels kept), R² = {:.3}.",
            f.points, f.intercept, f.slope, f.r2
        ),
        None => "Too few answers for a least-squares line (it needs answers at two fractions with some spread).".into(),
    }));
    out.push(Block::Figure {
        src: figure_src.into(),
        caption: "Human accuracy against the fraction of pixels kept (cf. the paper's Figure S7): \
                  dots are participants, red marks the mean ± std over participants, green the \
                  least-squares line through the dots, grey chance level."
            .into(),
    });
    out.push(Block::Heading(
        "Humans by the model that chose the subsets".into(),
    ));
    out.push(Block::Table {
        header: vec![
            "model (store)".into(),
            "pixels kept (%)".into(),
            "answers".into(),
            "human accuracy (%)".into(),
        ],
        rows: a
            .by_store
            .iter()
            .map(|r| {
                vec![
                    r.model.clone(),
                    frac_pct(r.fraction),
                    r.answers.to_string(),
                    pooled(r.correct, r.answers),
                ]
            })
            .collect(),
    });
    out.extend(models_blocks(a));
    out.extend(confusion_blocks(m, a));
    out.push(Block::Heading("Response times".into()));
    out.push(Block::Table {
        header: vec![
            "pixels kept (%)".into(),
            "answers".into(),
            "median (s)".into(),
            "mean (s)".into(),
            "timed in the browser".into(),
        ],
        rows: a
            .response_times
            .iter()
            .map(|r| {
                vec![
                    frac_pct(r.fraction),
                    r.answers.to_string(),
                    format!("{:.2}", r.median_s),
                    format!("{:.2}", r.mean_s),
                    r.from_browser.to_string(),
                ]
            })
            .collect(),
    });
    out.push(Block::Heading("Participants".into()));
    let mut header = vec!["code".to_string()];
    header.extend(
        m.fractions
            .iter()
            .map(|q| format!("{}% kept: accuracy (%) (answers)", frac_pct(*q))),
    );
    out.push(Block::Table {
        header,
        rows: a
            .participants
            .iter()
            .map(|p| {
                let mut row = vec![p.code.clone()];
                row.extend(
                    p.counts
                        .iter()
                        .map(|&(c, n)| format!("{} ({n})", pooled(c, n))),
                );
                row
            })
            .collect(),
    });
    out
}

fn models_blocks(a: &HumanAnalysis) -> Vec<Block> {
    let mut out = vec![Block::Heading(
        "Models beside humans on the same images".into(),
    )];
    if a.models.is_empty() {
        out.push(Block::Para(
            "No models were evaluated (build the study with `--models` to add them).".into(),
        ));
        return out;
    }
    out.push(Block::Para(
        "Each model on the subsets chosen by the other models, beside the humans on exactly \
         those images; its accuracy on the subsets it chose itself is near-tautological (backward \
         selection kept the pixels that keep that model confident) and is marked †."
            .into(),
    ));
    out.push(Block::Table {
        header: vec![
            "model".into(),
            "pixels kept (%)".into(),
            "images chosen by other models".into(),
            "humans on them (%)".into(),
            "model on them (%)".into(),
            "own images".into(),
            "† model on its own subsets (%)".into(),
        ],
        rows: a
            .models
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    frac_pct(r.fraction),
                    r.other_images.to_string(),
                    pooled(r.human_correct, r.human_answers),
                    opt_pct(r.other_accuracy),
                    r.own_images.to_string(),
                    r.own_accuracy
                        .map(|x| format!("{} †", pct(x)))
                        .unwrap_or_else(|| "–".into()),
                ]
            })
            .collect(),
    });
    out
}

fn confusion_blocks(m: &StudyManifest, a: &HumanAnalysis) -> Vec<Block> {
    let mut out = vec![Block::Heading(
        "Confusion matrices (rows: true class, columns: answer)".into(),
    )];
    for (f, q) in m.fractions.iter().enumerate() {
        out.push(Block::Para(format!("{}% of pixels kept:", frac_pct(*q))));
        let mut header = vec!["true \\ answer".to_string()];
        header.extend(a.classes.iter().map(|&c| m.class_names[c as usize].clone()));
        out.push(Block::Table {
            header,
            rows: a
                .classes
                .iter()
                .enumerate()
                .map(|(t, &c)| {
                    let mut row = vec![m.class_names[c as usize].clone()];
                    row.extend(a.confusion[f][t].iter().map(u64::to_string));
                    row
                })
                .collect(),
        });
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn to_markdown(blocks: &[Block], level: usize) -> String {
    let mut md = String::new();
    for (i, b) in blocks.iter().enumerate() {
        match b {
            Block::Heading(t) => {
                let hashes = "#".repeat(if i == 0 { level } else { level + 1 });
                let _ = writeln!(md, "{hashes} {t}\n");
            }
            Block::Para(t) => {
                let _ = writeln!(md, "{t}\n");
            }
            Block::Table { header, rows } => {
                let cells =
                    |r: &[String]| r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ");
                let _ = writeln!(md, "| {} |", cells(header));
                let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
                for r in rows {
                    let _ = writeln!(md, "| {} |", cells(r));
                }
                md.push('\n');
            }
            Block::Figure { src, caption } => {
                let _ = writeln!(md, "![{caption}]({src})\n\n*{caption}*\n");
            }
        }
    }
    md
}

/// `text` with `code` spans as `<code>`, the rest escaped.
fn inline_html(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", esc(part))
            } else {
                esc(part)
            }
        })
        .collect()
}

fn to_html(blocks: &[Block], level: usize) -> String {
    let mut h = String::from("<section class=\"human-study\">\n");
    for (i, b) in blocks.iter().enumerate() {
        match b {
            Block::Heading(t) => {
                let n = if i == 0 { level } else { level + 1 };
                let _ = writeln!(h, "<h{n}>{}</h{n}>", esc(t));
            }
            Block::Para(t) => {
                let _ = writeln!(h, "<p>{}</p>", inline_html(t));
            }
            Block::Table { header, rows } => {
                h.push_str("<table>\n<tr>");
                for c in header {
                    let _ = write!(h, "<th>{}</th>", esc(c));
                }
                h.push_str("</tr>\n");
                for r in rows {
                    h.push_str("<tr>");
                    for c in r {
                        let _ = write!(h, "<td>{}</td>", esc(c));
                    }
                    h.push_str("</tr>\n");
                }
                h.push_str("</table>\n");
            }
            Block::Figure { src, caption } => {
                let _ = writeln!(
                    h,
                    "<figure><img src=\"{}\" alt=\"{}\" style=\"max-width:100%\"><figcaption>{}</figcaption></figure>",
                    esc(src),
                    esc(caption),
                    esc(caption)
                );
            }
        }
    }
    h.push_str("</section>\n");
    h
}

/// What [`write_report`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HumanReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
    pub figure: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<(), HumanError> {
    std::fs::write(path, text).map_err(|e| HumanError::io(path, e))
}

/// Chance level of a study: one over the offered classes.
fn chance(m: &StudyManifest) -> f64 {
    1.0 / m.classes.len() as f64
}

/// Writes `report.md`, `report.html`, `human.json` and the figure into `out`.
pub fn write_report(study: &Path, out: &Path) -> Result<HumanReportFiles, HumanError> {
    let (m, a) = load(study)?;
    std::fs::create_dir_all(out).map_err(|e| HumanError::io(out, e))?;
    let files = HumanReportFiles {
        markdown: out.join("report.md"),
        html: out.join("report.html"),
        json: out.join(JSON_FILE),
        figure: out.join(FIGURE_FILE),
    };
    figure::accuracy_vs_fraction(&a, chance(&m), &files.figure)?;
    let blocks = blocks(study, &m, &a, FIGURE_FILE);
    write(&files.markdown, &to_markdown(&blocks, 1))?;
    write(
        &files.html,
        &format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Human study: {}</title>\
             <style>{}</style></head><body>\n{}</body></html>\n",
            esc(&study.display().to_string()),
            REPORT_STYLE,
            to_html(&blocks, 1)
        ),
    )?;
    write(
        &files.json,
        &serde_json::to_string_pretty(&a).expect("analysis serializes"),
    )?;
    Ok(files)
}

const REPORT_STYLE: &str = "body{font-family:system-ui,'DejaVu Sans',sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#1d1f23}\
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #d1d5db;padding:4px 9px;text-align:right}\
th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}figcaption{color:#4b5563;font-size:14px}";

/// Appends the human study section to a pipeline report in `report_dir`
/// (`report.md`, `report.html`, figure under `figures/`, numbers in `human.json`).
/// Returns `false` and changes nothing when the study has no answers yet.
pub fn append_to_pipeline_report(study: &Path, report_dir: &Path) -> Result<bool, HumanError> {
    let (m, a) = load(study)?;
    if a.answers == 0 {
        return Ok(false);
    }
    let figures = report_dir.join("figures");
    std::fs::create_dir_all(&figures).map_err(|e| HumanError::io(&figures, e))?;
    figure::accuracy_vs_fraction(&a, chance(&m), &figures.join(FIGURE_FILE))?;
    let blocks = blocks(study, &m, &a, &format!("figures/{FIGURE_FILE}"));
    let md_path = report_dir.join("report.md");
    let mut md = std::fs::read_to_string(&md_path).map_err(|e| HumanError::io(&md_path, e))?;
    md.push('\n');
    md.push_str(&to_markdown(&blocks, 2));
    write(&md_path, &md)?;
    let html_path = report_dir.join("report.html");
    let html = std::fs::read_to_string(&html_path).map_err(|e| HumanError::io(&html_path, e))?;
    let section = to_html(&blocks, 2);
    let html = match html.rfind("</body>") {
        Some(at) => format!("{}{section}{}", &html[..at], &html[at..]),
        None => html + &section,
    };
    write(&html_path, &html)?;
    write(
        &report_dir.join(JSON_FILE),
        &serde_json::to_string_pretty(&a).expect("analysis serializes"),
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::human::db::AnswerDb;
    use crate::human::manifest::sample_study;
    use crate::human::sequence::sequence;

    /// P1 answers everything: right on images 0–2 at 10%, on all but image 5 at 50%;
    /// P2 answers only the 10% batch, right on images 0–3.
    fn answered_study(dir: &Path) -> StudyManifest {
        let study = sample_study();
        study.save(dir).unwrap();
        let mut db = AnswerDb::open(&dir.join(DB_FILE)).unwrap();
        for (code, right_10, right_50, batches) in [("PPPPPPP1", 3, 5, 2), ("PPPPPPP2", 4, 6, 1)] {
            db.add_participant(code).unwrap();
            for (pos, t) in sequence(&study, code).into_iter().enumerate() {
                if t.fraction >= batches {
                    break;
                }
                let image = &study.images[t.image];
                let right = t.image < if t.fraction == 0 { right_10 } else { right_50 };
                let choice = if right {
                    image.label
                } else {
                    (image.label + 1) % 3
                };
                let id = &image.trials[t.fraction].id;
                db.mark_shown(code, id).unwrap();
                db.submit(code, id, pos as i64, choice, Some(1000 + pos as i64))
                    .unwrap();
            }
        }
        study
    }

    #[test]
    fn numbers_match_a_hand_computation() {
        let dir = tempfile::tempdir().unwrap();
        answered_study(dir.path());
        let (_, a) = load(dir.path()).unwrap();
        assert_eq!(a.answers, 18);
        // 10%: accuracies 3/6 and 4/6 → mean 7/12, sample std (1/6)/√2.
        assert!((a.table[0].mean - 7.0 / 12.0).abs() < 1e-12);
        assert!((a.table[0].std - (1.0 / 6.0) / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!((a.table[1].participants, a.table[1].answers), (1, 6));
        // Points (0.1, 1/2), (0.1, 2/3), (0.5, 5/6): slope 0.625, intercept 0.520833, R² 0.75.
        let fit = a.fit.clone().unwrap();
        assert!((fit.slope - 0.625).abs() < 1e-12, "{fit:?}");
        assert!((fit.intercept - 0.5208333333333334).abs() < 1e-12);
        assert!((fit.r2 - 0.75).abs() < 1e-12);
        // The model chose store 0's subsets (images 0, 3, 4); on store 1's (images 1,
        // 2, 5) at 10% it is always wrong; both humans got images 1 and 2 right there.
        let r = &a.models[0];
        assert_eq!(
            (r.other_images, r.other_accuracy, r.own_accuracy),
            (3, Some(0.0), Some(1.0))
        );
        assert_eq!((r.human_answers, r.human_correct), (6, 4));
        assert_eq!(a.models[1].other_accuracy, Some(1.0));
        let confusion_total: u64 = a.confusion.iter().flatten().flatten().sum();
        assert_eq!(confusion_total, 18);
        assert_eq!(a.response_times[0].from_browser, 12);

        let out = dir.path().join("report");
        let files = write_report(dir.path(), &out).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(md.contains("| 10 | 2 | 12 | 58.33 ± 11.79 |"), "{md}");
        assert!(md.contains("| 50 | 1 | 6 | 83.33 ± 0.00 |"), "{md}");
        assert!(md.contains("R² = 0.750"));
        assert!(
            md.contains("| m0 | 10 | 3 | 66.67 | 0.00 | 3 | 100.00 † |"),
            "{md}"
        );
        assert!(std::fs::metadata(&files.figure).unwrap().len() > 10_000);
        let json: HumanAnalysis =
            serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
        assert_eq!(json, a);
    }

    #[test]
    fn pipeline_report_gets_the_section_only_with_answers() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report");
        std::fs::create_dir_all(&report).unwrap();
        std::fs::write(report.join("report.md"), "# Pipeline\n").unwrap();
        std::fs::write(
            report.join("report.html"),
            "<html><body><h1>P</h1></body></html>\n",
        )
        .unwrap();
        let study = dir.path().join("study");
        std::fs::create_dir_all(&study).unwrap();
        sample_study().save(&study).unwrap();
        assert!(!append_to_pipeline_report(&study, &report).unwrap());
        assert_eq!(
            std::fs::read_to_string(report.join("report.md")).unwrap(),
            "# Pipeline\n"
        );
        answered_study(&study);
        assert!(append_to_pipeline_report(&study, &report).unwrap());
        let md = std::fs::read_to_string(report.join("report.md")).unwrap();
        assert!(md.starts_with("# Pipeline\n") && md.contains("## Human classification benchmark"));
        assert!(md.contains("(figures/human-accuracy.png)"));
        let html = std::fs::read_to_string(report.join("report.html")).unwrap();
        let section = html.find("<section class=\"human-study\">").unwrap();
        assert!(
            section > html.find("<h1>P</h1>").unwrap() && section < html.find("</body>").unwrap()
        );
        assert!(report.join("figures").join(FIGURE_FILE).exists());
    }
}
