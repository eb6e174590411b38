//! Summary statistics: over replicates ([`stat`]), over images, streamed
//! ([`Running`]), and the 95% intervals the report shows: Wilson for proportions
//! over images ([`wilson`]), Student's t for means over images ([`t975`]).

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
        // 0 without values: ±∞ would not survive JSON (written as null).
        min: values.iter().copied().reduce(f64::min).unwrap_or(0.0),
        max: values.iter().copied().reduce(f64::max).unwrap_or(0.0),
        count: None,
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
    min: f64,
    max: f64,
}

impl Running {
    pub fn add(&mut self, x: f64) {
        if self.n == 0 {
            (self.min, self.max) = (x, x);
        }
        (self.min, self.max) = (self.min.min(x), self.max.max(x));
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
            min: self.min,
            max: self.max,
            count: None,
        }
    }

    /// The mean with a 95% t interval (see [`mean_ci_of`]); `None` without values.
    pub fn mean_ci(&self) -> Option<MeanCi> {
        (self.n > 0).then(|| mean_ci_of(&self.stat()))
    }
}

/// The mean of `s` (over images) with a 95% t interval (`t₀.₉₇₅(n−1)·sd/√n`).
/// One value has no interval: `lo = hi = mean` with `n = 1`, which the report
/// shows as too few images, never as an interval of zero width.
pub fn mean_ci_of(s: &Stat) -> MeanCi {
    let half = if s.n < 2 {
        0.0
    } else {
        t975(s.n - 1) * s.std / (s.n as f64).sqrt()
    };
    MeanCi {
        mean: s.mean,
        lo: s.mean - half,
        hi: s.mean + half,
        n: s.n,
    }
}

/// The difference of two means over images, `a − b`, with a 95% Welch interval
/// (unequal variances; Welch–Satterthwaite degrees of freedom, rounded down, which
/// widens the interval slightly). `None` unless both have at least 2 values.
pub fn welch_diff_ci(a: &Stat, b: &Stat) -> Option<MeanCi> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let (va, vb) = (a.std * a.std / a.n as f64, b.std * b.std / b.n as f64);
    let se = (va + vb).sqrt();
    let df = if se > 0.0 {
        (va + vb).powi(2) / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64)
    } else {
        (a.n + b.n - 2) as f64
    };
    let half = t975((df.floor() as usize).max(1)) * se;
    let d = a.mean - b.mean;
    Some(MeanCi {
        mean: d,
        lo: d - half,
        hi: d + half,
        n: a.n + b.n,
    })
}

/// The two-sided 95% normal quantile `z = Φ⁻¹(0.975)`.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval (95%) of a proportion `k / n` over images: unlike the
/// normal interval it stays inside `[0, 1]` and has width for `k = 0` or `k = n`.
/// `None` for `n = 0`.
pub fn wilson(k: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n, z2) = (k as f64, n as f64, Z95 * Z95);
    let p = k / n;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (the half-width
/// factor of a 95% interval of a mean), by bisection on the t CDF.
pub fn t975(df: usize) -> f64 {
    assert!(df >= 1, "t quantile needs at least one degree of freedom");
    // P(T ≤ t) = 1 − I_{df/(df+t²)}(df/2, 1/2) / 2 for t ≥ 0.
    let upper_tail = |t: f64| 0.5 * inc_beta(df as f64 / 2.0, 0.5, df as f64 / (df as f64 + t * t));
    let (mut lo, mut hi) = (0.0f64, 1000.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if upper_tail(mid) > 0.025 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Regularized incomplete beta `I_x(a, b)` (continued fraction, Lentz's method).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..500 {
        let m = m as f64;
        let num = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        let den = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        for num in [num, den] {
            d = 1.0 + num * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= c * d;
        }
    }
    ln_front.exp() * f / a
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; relative error below 1e-13).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
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
        // t₀.₉₇₅ with 3 degrees of freedom is 3.182446 (any t table).
        assert!((ci.hi - ci.lo - 2.0 * 3.182446 * 0.025f64.sqrt() / 2.0).abs() < 1e-5);
        assert!(Running::default().mean_ci().is_none());
        assert_eq!(stat(&xs).n, 4);
    }

    #[test]
    fn wilson_intervals_match_newcombe_1998() {
        // Newcombe, "Two-sided confidence intervals for the single proportion",
        // Statistics in Medicine 17 (1998), Table II, method 3 (score, no correction).
        let cases = [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ];
        for (k, n, lo, hi) in cases {
            let (l, h) = wilson(k, n).unwrap();
            assert!(
                (l - lo).abs() < 5e-5 && (h - hi).abs() < 5e-5,
                "{k}/{n}: {l} {h}"
            );
        }
        assert!(wilson(0, 0).is_none());
    }

    #[test]
    fn t_quantiles_match_the_table() {
        // Two-sided 95% critical values of Student's t (e.g. NIST/SEMATECH
        // e-Handbook, Table 1.3.6.7.2).
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (5, 2.571),
            (10, 2.228),
            (30, 2.042),
            (100, 1.984),
        ] {
            assert!((t975(df) - t).abs() < 6e-4, "df {df}: {}", t975(df));
        }
        assert!((t975(100_000) - Z95).abs() < 1e-4);
    }

    #[test]
    fn welch_interval_by_hand() {
        // a = 1..5: mean 3, s² = 2.5 (s²/n = 0.5); b = 0, 2, …, 12: mean 6, s² = 112/6
        // (s²/n = 8/3). Welch df = (0.5 + 8/3)² / (0.5²/4 + (8/3)²/6) = 8.04 → 8, and
        // t₀.₉₇₅(8) = 2.306 (NIST table); a pooled test would use df 10 (2.228).
        let a = stat(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let b = stat(&[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        let d = welch_diff_ci(&a, &b).unwrap();
        let half = 2.306 * (0.5f64 + 8.0 / 3.0).sqrt();
        assert!((d.mean + 3.0).abs() < 1e-12);
        assert!((d.hi - d.mean - half).abs() < 2e-3, "{d:?}");
        assert!((d.mean - d.lo - half).abs() < 2e-3, "{d:?}");
        assert_eq!(d.n, 12);
        assert!(welch_diff_ci(&a, &stat(&[1.0])).is_none());
    }

    #[test]
    fn one_image_has_no_interval() {
        let mut r = Running::default();
        r.add(0.3);
        let ci = r.mean_ci().unwrap();
        assert_eq!((ci.n, ci.lo, ci.hi), (1, 0.3, 0.3));
    }
}
