//! Summary statistics: over replicates ([`stat`]) and over images, streamed
//! ([`Running`]).

use super::super::analyses::{MeanCi, Stat};

/// Mean, sample standard deviation (0 for one value) and count.
pub fn stat(values: &[f64]) -> Stat {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Stat {
        mean,
        std: var.sqrt(),
        n,
    }
}

/// Mean and sample variance of a stream in constant memory: the sum in arrival
/// order (so the mean equals `Σx / n` of a list) and Welford's update for the
/// squared deviations (numerically stable, unlike `Σx² − n·mean²`).
#[derive(Clone, Debug, Default)]
pub struct Running {
    n: usize,
    sum: f64,
    welford_mean: f64,
    m2: f64,
}

impl Running {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        let delta = x - self.welford_mean;
        self.welford_mean += delta / self.n as f64;
        self.m2 += delta * (x - self.welford_mean);
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    /// Mean ± std as [`stat`] gives for the same values.
    pub fn stat(&self) -> Stat {
        let var = if self.n > 1 {
            self.m2 / (self.n - 1) as f64
        } else {
            0.0
        };
        Stat {
            mean: self.mean(),
            std: var.sqrt(),
            n: self.n,
        }
    }

    /// The mean with a 95% interval (`1.96·sd/√n`); `None` without values.
    pub fn mean_ci(&self) -> Option<MeanCi> {
        if self.n == 0 {
            return None;
        }
        let s = self.stat();
        let half = 1.96 * s.std / (s.n as f64).sqrt();
        Some(MeanCi {
            mean: s.mean,
            lo: s.mean - half,
            hi: s.mean + half,
            n: s.n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_statistics_match_the_two_pass_formula() {
        // Two-pass by hand: values 0.1, 0.4, 0.25, 0.05 → mean 0.2,
        // squared deviations 0.01 + 0.04 + 0.0025 + 0.0225 = 0.075, / 3 = 0.025.
        let xs = [0.1, 0.4, 0.25, 0.05];
        let mut r = Running::default();
        xs.iter().for_each(|&x| r.add(x));
        let s = r.stat();
        assert_eq!(s.n, 4);
        assert!((s.mean - 0.2).abs() < 1e-15);
        assert!((s.std - 0.025f64.sqrt()).abs() < 1e-15);
        let ci = r.mean_ci().unwrap();
        assert!((ci.hi - ci.lo - 2.0 * 1.96 * 0.025f64.sqrt() / 2.0).abs() < 1e-12);
        assert!(Running::default().mean_ci().is_none());
        assert_eq!(stat(&xs).n, 4);
    }
}
