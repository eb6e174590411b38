//! The findings paragraph: plain language, every clause conditional on the
//! numbers, every number formatted with [`pct`].

use super::super::analyses::{Analyses, CorrectVsWrong, Stat, Table1Row};
use std::fmt::Write as _;

use super::pct;

/// What a Table 1 row or column is about, read from its name ("Full",
/// "BS 5%", "Random 5% test", "Full test", ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    Full,
    Backselect,
    Random,
    /// The mask-only control ("Mask of BS 5% (control)").
    MaskOnly,
    Other,
}

fn data_kind(name: &str) -> Data {
    let n = name.trim().to_ascii_lowercase();
    if n.starts_with("mask") {
        Data::MaskOnly
    } else if n.starts_with("agreement") {
        Data::Other
    } else if n.starts_with("full") {
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

/// The share of the BS-trained models' BS accuracy above chance that the mask-only
/// control reaches, `(acc_mask − 1/C) / (acc_BS − 1/C)` with `C` classes; `None`
/// without the control or when BS-trained models do not beat chance.
fn shape_share(a: &Analyses, model: &str) -> Option<f64> {
    let bs = find_row(a, model, Data::Backselect).and_then(|r| eval_on(r, Data::Backselect))?;
    let mask = find_row(a, model, Data::MaskOnly).and_then(|r| eval_on(r, Data::Backselect))?;
    let c = a.class_names.len();
    let chance = 1.0 / c.max(1) as f64;
    (c >= 2 && bs.mean > chance).then(|| (mask.mean - chance) / (bs.mean - chance))
}

/// What the gap between BS-trained and random-trained accuracy means, given the
/// mask-only control's share: the paper's reading (signal in the kept pixels' values)
/// holds only where the mask shape does not already explain the accuracy.
fn retrain_verdict(gap: f64, shape_share: Option<f64>) -> &'static str {
    if gap >= FAR_ABOVE {
        match shape_share {
            Some(x) if x >= MOSTLY_SHAPE => {
                "The backward-selection subsets are far more learnable than random ones, but the mask-only control below finds that mostly in where the kept pixels lie, not in their values: this retraining result alone is not evidence of signal in the pixel values. "
            }
            Some(x) if x >= PART_SHAPE => {
                "The backward-selection subsets are far more learnable than random ones; the mask-only control below finds part of that in where the kept pixels lie and the rest in their values: signal in so few pixels, which the paper found people cannot recognise. "
            }
            Some(_) => {
                "The backward-selection subsets therefore carry real, learnable signal in their pixel values, not their shape (the mask-only control below), in so few pixels that the paper found people cannot recognise them: the sign of overinterpretation the paper reports. "
            }
            None => {
                "The backward-selection subsets therefore carry learnable signal in so few pixels that the paper found people cannot recognise them: the sign of overinterpretation the paper reports (without the mask-only control, this run cannot tell it from mask-shape leakage). "
            }
        }
    } else if gap > ABOUT_SAME {
        match shape_share {
            Some(x) if x >= MOSTLY_SHAPE => {
                "The backward-selection subsets carry somewhat more learnable signal than random ones, but the margin is small and the mask-only control below finds it mostly in where the kept pixels lie: no evidence of signal in the pixel values. "
            }
            _ => {
                "The backward-selection subsets carry somewhat more learnable signal than random ones, but the margin is small, so this run gives only weak evidence of overinterpretation. "
            }
        }
    } else if gap >= -ABOUT_SAME {
        "Backward-selection and random subsets are about equally learnable, so this run shows no evidence that the selected pixels carry special signal. "
    } else {
        "The backward-selection subsets are less learnable than random ones, so this run shows no evidence of overinterpretation (the selected pixels do not carry more signal than chance pixels). "
    }
}

/// Shares of the BS accuracy above chance from which the mask shape explains most
/// of it, or a part worth naming.
const MOSTLY_SHAPE: f64 = 0.8;
const PART_SHAPE: f64 = 0.2;

/// The leakage control: the agreement of the BS-trained models with the original
/// model, and how much of their BS accuracy the mask shape alone explains,
/// `(acc_mask − 1/C) / (acc_BS − 1/C)` with `C` classes.
fn mask_only_sentence(s: &mut String, a: &Analyses, model: &str, q: &str) {
    let bs = find_row(a, model, Data::Backselect).and_then(|r| eval_on(r, Data::Backselect));
    let agreement = find_row(a, model, Data::Backselect).and_then(|r| {
        r.eval_on
            .iter()
            .find(|(e, _)| e.starts_with("Agreement"))
            .map(|(_, st)| st)
    });
    if let Some(g) = agreement {
        let _ = write!(
            s,
            "On the BS {q}% test subsets, the BS-trained models predict the class the original model predicted on the full image for {}% of the images. ",
            pct(g.mean)
        );
    }
    let mask = find_row(a, model, Data::MaskOnly).and_then(|r| eval_on(r, Data::Backselect));
    let c = a.class_names.len();
    let (Some(bs), Some(mask)) = (bs, mask) else {
        return;
    };
    let _ = write!(
        s,
        "Trained on the shape of the BS {q}% subsets alone (kept pixels one constant, pixel values gone), a model reaches {}% on the test masks",
        pct(mask.mean)
    );
    let chance = 1.0 / c.max(1) as f64;
    let Some(share) = shape_share(a, model) else {
        if c < 2 {
            s.push_str(". ");
        } else {
            let _ = write!(
                s,
                " (chance: {}%); BS-trained models do not beat chance, so there is nothing for the mask shape to explain. ",
                pct(chance)
            );
        }
        return;
    };
    if !(0.0..=1.0).contains(&share) {
        let _ = write!(
            s,
            " against {}% for BS-trained models (chance with {c} classes: {}%): {}. ",
            pct(bs.mean),
            pct(chance),
            if share > 1.0 {
                "the mask shape alone does better than the BS subsets themselves, so the BS result is explained by mask-shape leakage"
            } else {
                "the mask shape alone does not beat chance, so the BS subsets' signal is in their pixel values"
            }
        );
        return;
    }
    let verdict = if share >= MOSTLY_SHAPE {
        "so the BS result is mostly mask-shape leakage: where the kept pixels lie already tells the original model's prediction"
    } else if share >= PART_SHAPE {
        "so the mask shape carries part of the signal, and pixel values carry the rest"
    } else {
        "so the BS subsets' signal is in their pixel values, not in their shape"
    };
    let _ = write!(
        s,
        " against {}% for BS-trained models (chance with {c} classes: {}%): the shape alone explains {}% of the BS accuracy above chance, {verdict}. ",
        pct(bs.mean),
        pct(chance),
        pct(share)
    );
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
        accuracy_sentences(&mut s, a, &model, q);
        mask_only_sentence(&mut s, a, &model, q);

        confidence_sentence(&mut s, a, &model, q);

        stability_sentence(&mut s, a, &model, q);

        if let Some(cw) = a.correct_vs_wrong.iter().find(|c| c.model == model) {
            correct_vs_wrong_sentence(&mut s, cw, "", "Figure 4");
        }
        if let Some(cw) = a
            .corrupted_correct_vs_wrong
            .iter()
            .find(|c| c.model == model)
        {
            correct_vs_wrong_sentence(&mut s, cw, "on the corrupted set, ", "Figure S3");
        }
        if !s.is_empty() {
            out.push(s.trim_end().to_string());
        }
    }

    out.extend(transfer_sentence(a));
    if out.is_empty() {
        return "The analyses hold no accuracy or confidence numbers yet, so there are no findings to report.".into();
    }
    out.join(" ")
}

/// What the models retrained on BS and on random subsets reach, and the verdict.
fn accuracy_sentences(s: &mut String, a: &Analyses, model: &str, q: &str) {
    let full_row = find_row(a, model, Data::Full);
    let full_acc = full_row.and_then(|r| eval_on(r, Data::Full));
    let bs_row = find_row(a, model, Data::Backselect);
    let rnd_row = find_row(a, model, Data::Random);
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
            s.push_str(retrain_verdict(b.mean - r.mean, shape_share(a, model)));
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
}

/// The original model's confidence on full images and on its own BS subsets.
fn confidence_sentence(s: &mut String, a: &Analyses, model: &str, q: &str) {
    let full_row = find_row(a, model, Data::Full);
    if let Some(c) = a.confidence.iter().find(|c| c.model == model) {
        let orig_bs = full_row.and_then(|r| eval_on(r, Data::Backselect));
        let _ = write!(
            s,
            "In the class it predicts on the full image, the original model's mean confidence is {}% on full test images and {}% on its own {q}% backward-selection subsets (all other pixels masked)",
            pct(c.full.mean),
            pct(c.backselect.mean)
        );
        if let Some(o) = orig_bs {
            let _ = write!(s, ", where its accuracy is {}%", pct(o.mean));
        }
        let gone = super::super::report_pct(1.0 - a.fraction);
        let drop = c.full.mean - c.backselect.mean;
        if drop < 0.0 {
            let _ = write!(
                s,
                ": its confidence does not drop at all (it is {} points higher on the subsets) although {gone}% of the pixels are masked",
                pct(-drop)
            );
        } else if drop <= 0.05 {
            let _ = write!(
                s,
                ": its confidence barely drops although {gone}% of the pixels are masked"
            );
        } else if c.backselect.mean >= 0.5 {
            s.push_str(": its confidence stays high although most of the image is gone");
        } else {
            s.push_str(": its confidence drops substantially without the rest of the image");
        }
        let _ = write!(
            s,
            "; on random {q}% subsets it is {}%. ",
            pct(c.random.mean)
        );
    }
}

/// The subsets' stability between two noise seeds (gradient method).
fn stability_sentence(s: &mut String, a: &Analyses, model: &str, q: &str) {
    if let Some(st) = a.stability.iter().find(|st| st.model == model) {
        let verdict = if st.jaccard.mean >= 0.9 {
            "the subsets are chosen by the model, hardly by the tie-break noise"
        } else if st.jaccard.mean >= 0.5 {
            "the subsets depend partly on the tie-break noise"
        } else {
            "the subsets are largely chosen by the tie-break noise, so single pixels of them mean little"
        };
        let _ = write!(
            s,
            "Between two noise seeds of gradient BackSelect, its {q}% subsets overlap with a mean Jaccard index of {} over {} test images: {verdict}. ",
            super::fmt_ratio(st.jaccard.mean),
            st.jaccard.n
        );
    }
}

/// How well the subsets transfer between models (§4.1), when there are several.
fn transfer_sentence(a: &Analyses) -> Option<String> {
    let t = a.transfer.as_ref()?;
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
    if diag.is_empty() || off.is_empty() {
        return None;
    }
    let md = diag.iter().sum::<f64>() / diag.len() as f64;
    let mo = off.iter().sum::<f64>() / off.len() as f64;
    let verdict = if md - mo >= FAR_ABOVE {
        "the subsets are largely specific to the model that selected them"
    } else {
        "the subsets transfer across models, so the signal they carry is a property of the data, not of one model"
    };
    Some(format!(
        "Across models, a model classifies its own backward-selection subsets with {}% mean accuracy and other models' with {}%: {verdict}.",
        pct(md),
        pct(mo)
    ))
}

/// "At threshold τ, correctly classified images need …" with the verdict of the 95%
/// interval of the difference in means; `set` says where ("on the corrupted set, "), `figure` which of the
/// paper's figures found larger SIS for correct predictions.
fn correct_vs_wrong_sentence(s: &mut String, cw: &CorrectVsWrong, set: &str, figure: &str) {
    let (Some(c), Some(w)) = (&cw.correct, &cw.wrong) else {
        return;
    };
    let _ = write!(
        s,
        "At threshold {}, {set}correctly classified images need a mean SIS of {}% of the pixels (n = {}) and misclassified ones {}% (n = {})",
        cw.threshold,
        pct(c.mean),
        c.n,
        pct(w.mean),
        w.n
    );
    if c.n < 2 || w.n < 2 {
        s.push_str(" (too few images for an interval: no comparison). ");
        return;
    }
    let Some(i) = &cw.increase else {
        s.push_str(" (the misclassified images' mean SIS is 0: no increase to compute). ");
        return;
    };
    let interval = format!(
        "[{}, {}] (95% interval of the difference in means)",
        pct(i.lo),
        pct(i.hi)
    );
    if i.lo > 0.0 {
        let _ = write!(
            s,
            ": {}% larger for correct predictions {interval}, so larger SIS go with correct predictions, as in the paper's {figure}. ",
            pct(i.mean)
        );
    } else if i.hi < 0.0 {
        let _ = write!(
            s,
            ": {}% smaller for correct predictions {interval}, so here misclassified images need larger SIS, unlike the paper's {figure}. ",
            pct(-i.mean)
        );
    } else {
        let _ = write!(
            s,
            ": a change of {}% for correct predictions {interval}, which includes 0: no clear difference. ",
            pct(i.mean)
        );
    }
}
