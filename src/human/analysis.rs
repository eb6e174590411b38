//! The numbers of the human study, computed from the manifest and the stored
//! answers: per-participant accuracy per kept fraction (Table S3: mean ± std over
//! participants), the least-squares line of accuracy on kept fraction with its R²
//! (Figure S7, fitted on the per-participant points), the confusion matrix, the
//! humans' accuracy by the model that chose the subset, response times, and — on
//! the same images — the accuracy of the models.
//!
//! Conventions: accuracies are fractions in `[0, 1]`; a participant counts for a
//! fraction once they answered at least one image of its batch (their accuracy is
//! over the images they answered); the standard deviation is the sample one
//! (n − 1), 0 for a single participant; pooled accuracies are correct / answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::db::Answer;
use super::manifest::StudyManifest;

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HumanAnalysis {
    /// Kept fractions, ascending.
    pub fractions: Vec<f64>,
    /// Answers stored (for trials of this study).
    pub answers: usize,
    /// One entry per participant with at least one answer, by code.
    pub participants: Vec<Participant>,
    /// Table S3 analog: one row per fraction.
    pub table: Vec<FractionRow>,
    /// Least-squares fit of accuracy on kept fraction over the per-participant
    /// points; `None` with fewer than two distinct fractions answered or no spread.
    pub fit: Option<Fit>,
    /// The offered classes (rows and columns of the confusion matrix).
    pub classes: Vec<i64>,
    /// `confusion[f][t][c]`: answers at fraction `f` on images of the `t`-th class
    /// that chose the `c`-th class.
    pub confusion: Vec<Vec<Vec<u64>>>,
    /// Humans' pooled accuracy by the store (model) that chose the subsets.
    pub by_store: Vec<StoreRow>,
    /// Response times per fraction.
    pub response_times: Vec<RtRow>,
    /// Each evaluated model on the trial images, next to the humans.
    pub models: Vec<ModelRow>,
}

/// One participant's accuracy per fraction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub code: String,
    /// `(correct, answered)` per fraction.
    pub counts: Vec<(u64, u64)>,
}

impl Participant {
    /// Accuracy at fraction `f`, if they answered any image of that batch.
    pub fn accuracy(&self, f: usize) -> Option<f64> {
        let (c, n) = self.counts[f];
        (n > 0).then(|| c as f64 / n as f64)
    }
}

/// Table S3 row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FractionRow {
    pub fraction: f64,
    /// Participants who answered at this fraction, and their answers.
    pub participants: usize,
    pub answers: u64,
    /// Mean and sample std of the per-participant accuracies.
    pub mean: f64,
    pub std: f64,
}

/// `accuracy ≈ intercept + slope · fraction`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    pub r2: f64,
    /// Number of (participant, fraction) points fitted.
    pub points: usize,
}

/// Humans on the subsets one store's model chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreRow {
    pub store: usize,
    pub model: String,
    pub fraction: f64,
    pub answers: u64,
    pub correct: u64,
}

/// Response times at one fraction, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RtRow {
    pub fraction: f64,
    /// Answers with a time; of them, how many were measured in the browser (the
    /// others from the server's send-to-receive time).
    pub answers: usize,
    pub from_browser: usize,
    pub median_s: f64,
    pub mean_s: f64,
}

/// A model on the trial images at one fraction, beside the humans on the same images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    /// Index into the manifest's models, and its description.
    pub model: usize,
    pub name: String,
    pub fraction: f64,
    /// Images whose subsets another model chose: how many, this model's accuracy on
    /// them, and the humans' pooled accuracy on the same images (answers, correct).
    pub other_images: usize,
    pub other_accuracy: Option<f64>,
    pub human_answers: u64,
    pub human_correct: u64,
    /// Images this model chose itself (near-tautological: the subset was selected
    /// to keep this model confident): how many, and its accuracy.
    pub own_images: usize,
    pub own_accuracy: Option<f64>,
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    let std = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

/// Ordinary least squares of `y` on `x` with R² = 1 − SS_res / SS_tot.
pub fn least_squares(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if points.len() < 2 || sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_res: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    Some(Fit {
        slope,
        intercept,
        r2: 1.0 - ss_res / syy,
        points: points.len(),
    })
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Computes every number of the report.
pub fn analyse(study: &StudyManifest, answers: &[Answer]) -> HumanAnalysis {
    let index = study.trial_index();
    let nf = study.fractions.len();
    let class_pos: BTreeMap<i64, usize> = study
        .classes
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i))
        .collect();
    let nc = study.classes.len();
    let mut participants: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut confusion = vec![vec![vec![0u64; nc]; nc]; nf];
    let mut by_store = vec![vec![(0u64, 0u64); nf]; study.stores.len()];
    // Per trial id: (answers, correct), for the models-beside-humans rows.
    let mut per_trial: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut times: Vec<Vec<(f64, bool)>> = vec![Vec::new(); nf];
    let mut counted = 0;
    for a in answers {
        let Some(at) = index.get(&a.trial_id) else {
            continue;
        };
        counted += 1;
        let image = &study.images[at.image];
        let correct = u64::from(a.choice == image.label);
        let p = participants
            .entry(a.code.clone())
            .or_insert_with(|| vec![(0, 0); nf]);
        p[at.fraction].0 += correct;
        p[at.fraction].1 += 1;
        if let (Some(&t), Some(&c)) = (class_pos.get(&image.label), class_pos.get(&a.choice)) {
            confusion[at.fraction][t][c] += 1;
        }
        let s = &mut by_store[image.store][at.fraction];
        s.0 += 1;
        s.1 += correct;
        let t = per_trial.entry(study.trial(*at).id.as_str()).or_default();
        t.0 += 1;
        t.1 += correct;
        match (a.client_rt_ms, a.server_rt_ms) {
            (Some(ms), _) => times[at.fraction].push((ms as f64 / 1000.0, true)),
            (None, Some(ms)) => times[at.fraction].push((ms as f64 / 1000.0, false)),
            _ => {}
        }
    }
    let participants: Vec<Participant> = participants
        .into_iter()
        .map(|(code, counts)| Participant { code, counts })
        .collect();
    let mut points = Vec::new();
    let table = (0..nf)
        .map(|f| {
            let accs: Vec<f64> = participants.iter().filter_map(|p| p.accuracy(f)).collect();
            points.extend(accs.iter().map(|&a| (study.fractions[f], a)));
            let (mean, std) = mean_std(&accs);
            FractionRow {
                fraction: study.fractions[f],
                participants: accs.len(),
                answers: participants.iter().map(|p| p.counts[f].1).sum(),
                mean,
                std,
            }
        })
        .collect();
    let by_store = by_store
        .iter()
        .enumerate()
        .flat_map(|(s, row)| {
            row.iter()
                .enumerate()
                .map(move |(f, &(answers, correct))| StoreRow {
                    store: s,
                    model: study.store_name(s),
                    fraction: study.fractions[f],
                    answers,
                    correct,
                })
        })
        .collect();
    let response_times = times
        .iter_mut()
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .map(|(f, t)| {
            let mut secs: Vec<f64> = t.iter().map(|x| x.0).collect();
            RtRow {
                fraction: study.fractions[f],
                answers: t.len(),
                from_browser: t.iter().filter(|x| x.1).count(),
                mean_s: secs.iter().sum::<f64>() / secs.len() as f64,
                median_s: median(&mut secs),
            }
        })
        .collect();
    HumanAnalysis {
        fractions: study.fractions.clone(),
        answers: counted,
        fit: least_squares(&points),
        participants,
        table,
        classes: study.classes.clone(),
        confusion,
        by_store,
        response_times,
        models: model_rows(study, &per_trial),
    }
}

/// Each model's accuracy on others' and on its own subsets, with the humans' on the
/// former.
fn model_rows(study: &StudyManifest, per_trial: &BTreeMap<&str, (u64, u64)>) -> Vec<ModelRow> {
    let mut rows = Vec::new();
    for (m, model) in study.models.iter().enumerate() {
        for (f, &fraction) in study.fractions.iter().enumerate() {
            let (mut other, mut other_ok, mut own, mut own_ok) = (0usize, 0usize, 0usize, 0usize);
            let (mut h_n, mut h_ok) = (0u64, 0u64);
            for image in &study.images {
                let trial = &image.trials[f];
                let ok = usize::from(trial.predictions[m] == image.label);
                if model.store == Some(image.store) {
                    own += 1;
                    own_ok += ok;
                } else {
                    other += 1;
                    other_ok += ok;
                    let (n, c) = per_trial
                        .get(trial.id.as_str())
                        .copied()
                        .unwrap_or_default();
                    h_n += n;
                    h_ok += c;
                }
            }
            let acc = |ok: usize, n: usize| (n > 0).then(|| ok as f64 / n as f64);
            rows.push(ModelRow {
                model: m,
                name: study.model_name(m),
                fraction,
                other_images: other,
                other_accuracy: acc(other_ok, other),
                human_answers: h_n,
                human_correct: h_ok,
                own_images: own,
                own_accuracy: acc(own_ok, own),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_and_least_squares_match_hand_computation() {
        let (m, s) = mean_std(&[0.2, 0.4, 0.9]);
        assert!((m - 0.5).abs() < 1e-12);
        // deviations -0.3, -0.1, 0.4 → squares 0.09 + 0.01 + 0.16 = 0.26; /2 = 0.13.
        assert!((s - 0.13f64.sqrt()).abs() < 1e-12);
        // y = 1 + 2x exactly → R² = 1.
        let f = least_squares(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-12 && (f.intercept - 1.0).abs() < 1e-12);
        assert!((f.r2 - 1.0).abs() < 1e-12);
        // (0,0),(1,1),(2,1): x̄=1, ȳ=2/3, Sxx=2, Sxy=1 → slope 0.5, intercept 1/6;
        // residuals -1/6, 1/3, -1/6 → SSres = 1/6; SStot = 2/3 → R² = 0.75.
        let f = least_squares(&[(0.0, 0.0), (1.0, 1.0), (2.0, 1.0)]).unwrap();
        assert!((f.r2 - 0.75).abs() < 1e-12, "{f:?}");
        assert!(least_squares(&[(0.5, 0.2), (0.5, 0.4)]).is_none());
    }
}
