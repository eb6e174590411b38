//! The report as a list of blocks, built once from the analyses so that the
//! Markdown and HTML renderings cannot disagree.

use std::fs;
use std::path::Path;

use super::super::analyses::{Analyses, CorrectVsWrong, MeanCi};
use super::prose::findings;
use super::{fmt_ci, fmt_ratio, fmt_stat, pct};

/// One piece of the report, rendered to Markdown or HTML.
#[derive(Clone, Debug)]
pub(super) enum Block {
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

pub(super) fn build_blocks(a: &Analyses, dir: &Path, figs: &[(String, String)]) -> Vec<Block> {
    let mut b = Vec::new();
    let q = super::super::report_pct(a.fraction);
    b.push(Block::Heading(
        1,
        format!("Overinterpretation report: {}", a.name),
    ));
    b.push(Block::Paragraph(format!(
        "Dataset {} ({} training images, {} test images, {} classes); subset fraction {}% of pixels. Accuracies, confidences and SIS sizes are percentages with two decimals; intervals in brackets are 95% intervals (Wilson for an accuracy or proportion of one model over the test images, Student t for a mean over images); ± is one standard deviation over 3 or more replicate models, a range in parentheses spans 2 replicates, (n) counts replicates or images.",
        a.dataset, a.train_images, a.test_images, a.class_names.len(), q
    )));
    b.push(Block::Heading(2, "Findings".into()));
    b.push(Block::Paragraph(findings(a)));
    table1_blocks(&mut b, a, &q);
    if !a.corruption.is_empty() {
        corruption_blocks(&mut b, a);
    }
    stability_blocks(&mut b, a, &q);
    confidence_blocks(&mut b, a, &q);
    sis_size_blocks(&mut b, a);
    correct_vs_wrong_table(
        &mut b,
        &a.correct_vs_wrong,
        "SIS size of correct vs. wrong predictions (Figure 4 analog)",
        "test images",
    );
    correct_vs_wrong_table(
        &mut b,
        &a.corrupted_correct_vs_wrong,
        "SIS size of correct vs. wrong predictions on the corrupted set (Figure S3 analog)",
        "images of the corrupted test set",
    );
    transfer_blocks(&mut b, a);
    b.push(Block::Heading(2, "Figures".into()));
    for (src, caption) in figs {
        b.push(Block::Figure {
            src: src.clone(),
            caption: caption.clone(),
            size: None,
        });
    }
    gallery_blocks(&mut b, a, dir);
    settings_blocks(&mut b, a, &q);
    b
}

/// The Table 1 analog: accuracy of every model on every evaluation set.
fn table1_blocks(b: &mut Vec<Block>, a: &Analyses, q: &str) {
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
            "Test accuracy (%) on the {n} test images. For the model trained on full images (one model): accuracy [95% Wilson interval]; for models retrained on subsets: mean (min–max) over 2 replicates, mean ± std (replicates) over 3 or more. \"BS\" subsets keep the {q}% of pixels that backward selection on the original model kept; \"Random\" subsets keep {q}% of pixels chosen at random; all other pixels are masked (0 after normalization). \"Agreement\" is the share of BS test subsets on which a model predicts the class the original model predicted on the full image (not the label): a model that learned the original model's decisions agrees even where both are wrong. The mask-only control (beyond the paper) is retrained on the BS subsets' keep-masks alone — every kept pixel set to one constant (about +1 after normalization in every channel), every other pixel 0 — and evaluated on the test subsets' masks the same way: its accuracy is what the subsets' shape alone tells, without any pixel value.",
            n = a.test_images
        )));
        let mut header = vec!["Model".to_string(), "Trained on".to_string()];
        // Agreement is not an evaluation set: its column keeps its own name.
        header.extend(evals.iter().map(|e| {
            if e.starts_with("Agreement") {
                e.to_string()
            } else {
                format!("Evaluated on {e}")
            }
        }));
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
}

/// The original model's mean confidence on full images and on its subsets.
fn confidence_blocks(b: &mut Vec<Block>, a: &Analyses, q: &str) {
    if !a.confidence.is_empty() {
        b.push(Block::Heading(2, "Confidence of the original model".into()));
        b.push(Block::Paragraph(
            "Mean confidence (%) of the model trained on full images in the class it predicts on the full image (also where a masked image's top class differs), on full test images and on their subsets, with 95% t intervals over the images (n). The drop is full − BS.".into(),
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
                        fmt_ci(&c.full),
                        fmt_ci(&c.backselect),
                        fmt_ci(&c.random),
                        pct(c.full.mean - c.backselect.mean),
                    ]
                })
                .collect(),
        });
    }
}

/// The Figure 5 analog: mean SIS size at each threshold, one column per model.
fn sis_size_blocks(b: &mut Vec<Block>, a: &Analyses) {
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
}

/// Accuracy of each model on the backselect subsets selected by another (§4.1).
fn transfer_blocks(b: &mut Vec<Block>, a: &Analyses) {
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
}

/// The Figure 1 analog: one gallery figure per model and threshold.
fn gallery_blocks(b: &mut Vec<Block>, a: &Analyses, dir: &Path) {
    if !a.galleries.is_empty() {
        b.push(Block::Heading(2, "SIS galleries (Figure 1 analog)".into()));
        for g in &a.galleries {
            let name = |c: i64| {
                a.class_names
                    .get(c as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("class {c}"))
            };
            let rows: Vec<String> = g
                .rows
                .iter()
                .map(|(i, y, p)| format!("image {i} (label {}, predicted {})", name(*y), name(*p)))
                .collect();
            b.push(Block::Figure {
                size: gallery_size(&dir.join(&g.png)),
                src: g.png.clone(),
                caption: format!(
                    "{} at threshold {}: each row shows the original test image, the location of its SIS, the SIS alone (all other pixels masked), and the order in which backward selection removed the pixels (cf. the paper's Figure S9; viridis scale, dark = removed first, bright = removed last, so the SIS is among the brightest). {} Rows: {}.",
                    g.model,
                    g.threshold,
                    if g.checked == 0 {
                        "These SIS were not re-evaluated with a model before drawing.".to_string()
                    } else {
                        format!(
                            "Each SIS shown was re-evaluated with the model before drawing: {} of {} checked had confidence ≥ {} in the predicted class and are shown.",
                            g.verified, g.checked, g.threshold
                        )
                    },
                    rows.join("; ")
                ),
            });
        }
    }
}

/// The run's settings and the spec that produced the report.
fn settings_blocks(b: &mut Vec<Block>, a: &Analyses, q: &str) {
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
}

/// The corrupted test set per corruption and severity: one row per group, one
/// column per row of the Table 1 analog.
fn corruption_blocks(b: &mut Vec<Block>, a: &Analyses) {
    b.push(Block::Heading(
        2,
        "Accuracy on the corrupted test set by corruption and severity".into(),
    ));
    b.push(Block::Paragraph(
        "Test accuracy (%) of each model (columns: model, trained on) on each corruption at each severity of the corrupted test set, in the Table 1 analog's format.".into(),
    ));
    let mut groups: Vec<&String> = a
        .corruption
        .iter()
        .flat_map(|r| r.groups.iter().map(|(g, _)| g))
        .collect();
    groups.sort();
    groups.dedup();
    let mut header = vec!["Corruption/severity".to_string()];
    header.extend(
        a.corruption
            .iter()
            .map(|r| format!("{}, trained on {}", r.model, r.train_on)),
    );
    let rows = groups
        .iter()
        .map(|g| {
            let mut row = vec![g.to_string()];
            row.extend(a.corruption.iter().map(|r| {
                r.groups
                    .iter()
                    .find(|(n, _)| n == *g)
                    .map_or("—".into(), |(_, s)| fmt_stat(s))
            }));
            row
        })
        .collect();
    b.push(Block::Table { header, rows });
}

/// The backselect subsets' stability between two BackSelect runs.
fn stability_blocks(b: &mut Vec<Block>, a: &Analyses, q: &str) {
    b.push(Block::Heading(
        2,
        "Stability of the backselect subsets".into(),
    ));
    if a.stability.is_empty() {
        b.push(Block::Paragraph(
            "Not measured: only Batched Gradient BackSelect has a tie-break noise seed to vary (exact and screened BackSelect break ties by pixel index), so either this run used another method or no test image had a subset to compare.".into(),
        ));
        return;
    }
    b.push(Block::Paragraph(format!(
        "Beyond the paper: the first test images (n; at most 200) were backward-selected a second time with another noise seed, and the {q}% subsets of both runs compared. Jaccard index |A ∩ B| / |A ∪ B| per image: mean [95% t interval] and the smallest. 1 means identical subsets; subsets that move with the seed are chosen by the tie-break noise, not by the model. This run computes one BackSelect method, so exact and gradient BackSelect are not compared here."
    )));
    b.push(Block::Table {
        header: vec![
            "Model".into(),
            "Compared".into(),
            "Mean Jaccard [95% CI] (n)".into(),
            "Smallest".into(),
        ],
        rows: a
            .stability
            .iter()
            .map(|s| {
                let j = &s.jaccard;
                let mean = if j.n < 2 {
                    format!("{} (too few images, n = {})", fmt_ratio(j.mean), j.n)
                } else {
                    format!(
                        "{} [{}, {}] ({})",
                        fmt_ratio(j.mean),
                        fmt_ratio(j.lo),
                        fmt_ratio(j.hi.min(1.0)),
                        j.n
                    )
                };
                vec![
                    s.model.clone(),
                    s.comparison.clone(),
                    mean,
                    fmt_ratio(s.min_jaccard),
                ]
            })
            .collect(),
    });
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

/// The table of mean SIS sizes of correctly and wrongly classified `set` (nothing
/// when `rows` is empty).
fn correct_vs_wrong_table(b: &mut Vec<Block>, rows: &[CorrectVsWrong], heading: &str, set: &str) {
    if rows.is_empty() {
        return;
    }
    b.push(Block::Heading(2, heading.into()));
    b.push(Block::Paragraph(format!(
        "Mean SIS size (% of pixels) [95% confidence interval] (number of images) of correctly and wrongly classified {set}, and the paper's measure: the increase of the correct images' mean over the misclassified ones' (% of the latter) [95% Welch interval of the difference in means, scaled the same way]. The paper plots that increase over several thresholds; here it is at the one threshold τ."
    )));
    let cell = |m: &Option<MeanCi>| m.as_ref().map_or("—".into(), fmt_ci);
    b.push(Block::Table {
        header: vec![
            "Model".into(),
            "Threshold τ".into(),
            "Correctly classified".into(),
            "Misclassified".into(),
            "Increase (%)".into(),
        ],
        rows: rows
            .iter()
            .map(|c| {
                vec![
                    c.model.clone(),
                    format!("{}", c.threshold),
                    cell(&c.correct),
                    cell(&c.wrong),
                    c.increase.as_ref().map_or("—".into(), |m| {
                        format!("{} [{}, {}]", pct(m.mean), pct(m.lo), pct(m.hi))
                    }),
                ]
            })
            .collect(),
    });
}
