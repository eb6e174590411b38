//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// Step decay: `lr · gamma^(number of milestones ≤ epoch)`. The paper's CIFAR
/// default is lr 0.1 divided by 5 (gamma 0.2) at epochs 60, 120 and 160 of 200.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSchedule {
    pub lr: f64,
    pub milestones: Vec<usize>,
    pub gamma: f64,
}

impl StepSchedule {
    /// Learning rate for the 0-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let decays = self.milestones.iter().filter(|&&m| m <= epoch).count();
        self.lr * self.gamma.powi(decays as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_cifar_schedule() {
        let s = StepSchedule {
            lr: 0.1,
            milestones: vec![60, 120, 160],
            gamma: 0.2,
        };
        // 0.1, then ÷5 at each milestone: 0.02, 0.004, 0.0008.
        for (epoch, lr) in [
            (0, 0.1),
            (59, 0.1),
            (60, 0.02),
            (119, 0.02),
            (120, 0.004),
            (160, 0.0008),
            (199, 0.0008),
        ] {
            assert!((s.lr_at(epoch) - lr).abs() < 1e-12, "epoch {epoch}");
        }
    }
}
