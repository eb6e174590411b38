//! Small shared helpers: device parsing, a seeded RNG, hashing, and [`progress`]
//! reporting for people and logs.

pub mod progress;

pub use progress::Progress;

use tch::Device;

/// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`, checking that the GPU exists.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let device = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(format!("unknown device {s:?}: use cpu, cuda or cuda:N")),
        },
    };
    let available = tch::Cuda::device_count() as usize;
    if device >= available {
        return Err(format!(
            "device {s:?} requested but this machine has {available} CUDA device(s) visible to libtorch"
        ));
    }
    Ok(Device::Cuda(device))
}

/// SplitMix64: a tiny, fast, seedable generator. We use our own rather than the
/// `rand` crate so that shuffles, crops and random subsets stay identical across
/// dependency upgrades: a seed recorded in a config must reproduce the run.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// A generator for stream `stream` of `seed` (e.g. one per epoch or per image),
    /// independent of how many numbers other streams drew.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut g = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        g.next_u64();
        g
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`: the top 53 bits, so every value is an exact f64.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (Lemire's multiply-shift; bias is below 2^-32 for our n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32).wrapping_mul(n as u64) >> 32) as usize
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i + 1));
        }
    }
    /// `count` distinct values from `0..n`, in increasing order (partial Fisher–Yates).
    pub fn sample(&mut self, n: usize, count: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        let count = count.min(n);
        for i in 0..count {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        let mut out = all[..count].to_vec();
        out.sort_unstable();
        out
    }
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// This process's peak resident memory in KiB (`VmHWM` of `/proc/self/status`);
/// `None` where there is no procfs.
pub fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // Reference: the SplitMix64 paper's C code (Steele et al. 2014) seeded with 0
        // yields 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220a8397b1dcdaf);
        assert_eq!(g.next_u64(), 0x6e789e6aa1b965f4);
        assert_eq!(g.next_u64(), 0x06c45d188009454f);
    }

    #[test]
    fn sample_is_distinct_sorted_and_in_range() {
        let mut g = SplitMix64::new(7);
        let s = g.sample(1024, 52);
        assert_eq!(s.len(), 52);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(*s.last().unwrap() < 1024);
    }

    #[test]
    fn device_names() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert!(parse_device("gpu")
            .unwrap_err()
            .contains("use cpu, cuda or cuda:N"));
    }
}
