//! Ensembles as the paper builds them (Section 3.1): the output is the arithmetic
//! mean of the members' **logits** (not of their probabilities), so SIS on an
//! ensemble uses `softmax(mean logits)` as its confidence.

use tch::{Device, Tensor};

use super::{Classifier, ModelError};

/// A mean-of-logits ensemble of any classifiers (native, TorchScript, wrapped, even
/// other ensembles). Members must agree on classes, input shape and device.
pub struct Ensemble {
    /// At least one member; each sees the same input.
    members: Vec<Box<dyn Classifier>>,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Ensemble {
    /// Checks that the members agree (same number of classes, same `[C, H, W]`, same
    /// device) and builds the ensemble. The error names the first member that differs
    /// from the first one.
    pub fn new(members: Vec<Box<dyn Classifier>>) -> Result<Self, ModelError> {
        let Some(first) = members.first() else {
            return Err(ModelError::Invalid(
                "an ensemble needs at least one member".into(),
            ));
        };
        for (i, m) in members.iter().enumerate().skip(1) {
            let problem = if m.num_classes() != first.num_classes() {
                Some(format!("{} classes", m.num_classes()))
            } else if m.input_shape() != first.input_shape() {
                Some(format!("input shape {:?}", m.input_shape()))
            } else if m.device() != first.device() {
                Some(format!("device {:?}", m.device()))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(ModelError::Invalid(format!(
                    "ensemble members disagree: member {i} ({}) has {problem}, but member 0 ({}) has \
                     {} classes, input shape {:?} on {:?}",
                    m.describe(),
                    first.describe(),
                    first.num_classes(),
                    first.input_shape(),
                    first.device()
                )));
            }
        }
        Ok(Self { members })
    }

    /// The members, in the order given.
    pub fn members(&self) -> &[Box<dyn Classifier>] {
        &self.members
    }
}

impl Classifier for Ensemble {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let mut sum: Option<Tensor> = None;
        for m in &self.members {
            let logits = m.forward(xs, train)?;
            sum = Some(match sum {
                None => logits,
                Some(s) => s.f_add(&logits)?,
            });
        }
        // `new` guarantees at least one member.
        let sum = sum.ok_or_else(|| ModelError::Invalid("empty ensemble".into()))?;
        Ok(sum.f_div_scalar(self.members.len() as f64)?)
    }

    fn num_classes(&self) -> i64 {
        self.members[0].num_classes()
    }

    fn input_shape(&self) -> [i64; 3] {
        self.members[0].input_shape()
    }

    fn device(&self) -> Device {
        self.members[0].device()
    }

    fn freeze(&mut self) {
        for m in &mut self.members {
            m.freeze();
        }
    }

    fn set_kind(&mut self, kind: tch::Kind) -> Result<(), ModelError> {
        self.members.iter_mut().try_for_each(|m| m.set_kind(kind))
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self.members.iter().map(|m| m.describe()).collect();
        format!(
            "ensemble (mean of logits) of {}: [{}]",
            self.members.len(),
            names.join("; ")
        )
    }
}
