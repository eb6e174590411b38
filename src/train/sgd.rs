//! SGD with (Nesterov) momentum and weight decay, with PyTorch's exact update rule.
//!
//! We keep our own optimizer rather than libtorch's because its momentum buffers
//! must be saved with each checkpoint: a resumed run then continues exactly as an
//! uninterrupted one would.

use tch::{nn::VarStore, Tensor};

/// `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)` semantics:
/// `g = grad + wd·p; buf = m·buf + g` (buf = g on the first step);
/// `update = g + m·buf` (Nesterov) or `buf`; `p -= lr·update`.
pub struct Sgd {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Trainable parameters by name, sorted, so buffers line up with checkpoints.
    params: Vec<(String, Tensor)>,
    /// Momentum buffers by parameter name; absent before a parameter's first step.
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(vs: &VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|_| None).collect();
        Self {
            momentum,
            nesterov,
            weight_decay,
            params,
            buffers,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter_mut().zip(self.buffers.iter_mut()) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 {
                    grad + &*p * self.weight_decay
                } else {
                    grad
                };
                let update = if self.momentum != 0.0 {
                    let b = match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(self.momentum).g_add_(&g);
                            b.shallow_clone()
                        }
                        None => {
                            let b = g.copy();
                            *buf = Some(b.shallow_clone());
                            b
                        }
                    };
                    if self.nesterov {
                        g + b * self.momentum
                    } else {
                        b
                    }
                } else {
                    g
                };
                let _ = p.g_sub_(&(update * lr));
            }
        })
    }

    /// Momentum buffers by parameter name, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (name.clone(), b.shallow_clone())))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]. Unknown names are an error:
    /// they mean the checkpoint belongs to another model.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), String> {
        for (name, tensor) in state {
            let Some(i) = self.params.iter().position(|(n, _)| *n == name) else {
                return Err(format!(
                    "optimizer state has parameter {name:?} the model lacks"
                ));
            };
            let p = &self.params[i].1;
            if tensor.size() != p.size() {
                return Err(format!(
                    "optimizer state for {name:?} has shape {:?}, the parameter {:?}",
                    tensor.size(),
                    p.size()
                ));
            }
            self.buffers[i] = Some(tensor.to_device(p.device()).to_kind(p.kind()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn nesterov_update_matches_pytorch() {
        // PyTorch reference:
        //   p = torch.tensor([1.0, -2.0], requires_grad=True)
        //   opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
        //   for _ in range(2): opt.zero_grad(); (p**2).sum().backward(); opt.step()
        // Step 1: g = 2p + 0.01p = [2.01, -4.02]; buf = g; upd = g + 0.9 g = [3.819, -7.638]
        //         p = [1 - 0.3819, -2 + 0.7638] = [0.6181, -1.2362]
        // Step 2: g = 2.01 p = [1.242381, -2.484762]; buf = 0.9·[2.01,-4.02] + g = [3.051381, -6.102762]
        //         upd = g + 0.9 buf = [3.9886239, -7.9772478]; p = [0.21923761, -0.43847522]
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs
            .root()
            .var_copy("p", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut sgd = Sgd::new(&vs, 0.9, true, 0.01);
        for _ in 0..2 {
            sgd.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            sgd.step(0.1);
        }
        let got = Vec::<f32>::try_from(&p).unwrap();
        assert!((got[0] - 0.219_237_6).abs() < 1e-5, "{got:?}");
        assert!((got[1] + 0.438_475_2).abs() < 1e-5, "{got:?}");
    }
}
