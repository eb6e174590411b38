//! The findings paragraph: plain language, every clause conditional on the
//! numbers, every number formatted with [`pct`].

use super::super::analyses::{Analyses, Stat, Table1Row};
use std::fmt::Write as _;

use super::pct;

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

pub(super) fn models(a: &Analyses) -> Vec<String> {
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
    let q = super::super::report_pct(a.fraction);
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
