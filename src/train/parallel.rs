//! Data-parallel training over a gang of ranks (one process per node or GPU).
//!
//! Every rank runs the same loop as single-node [`train`](super::train), on the same
//! global shuffled order (the per-epoch [`SplitMix64`] stream of the shared seed), and
//! takes its slice of every global batch of `batch_size` rows:
//!
//! - **Slices are contiguous**: of a global batch of `b` rows, rank `r` of `N` takes rows
//!   `[r·b/N, (r+1)·b/N)` (integer division), so the slices of the last, short batch
//!   differ by at most one row. Augmentation draws are skipped for the other ranks'
//!   rows, so every image gets the crop and flip it gets in a 1-rank run.
//! - **Loss weighting**: rank `r` back-propagates `N · Σ_{i∈slice} ℓ_i / b`. The mean over
//!   ranks of these is `Σ_i ℓ_i / b`, the global mean loss, whatever the slice sizes, so the
//!   averaged gradient equals the 1-rank gradient of the same global batch (up to float
//!   summation order). A rank whose slice is empty (a last batch shorter than `N`) still
//!   runs a zero-weighted step on one row so its gradients exist and it joins the
//!   all-reduce.
//! - **One all-reduce per step**: all trainable gradients (sorted by name) are copied into
//!   one flat f32 buffer and averaged with one collective: [`RingAllReduce`] on CPU, or
//!   NCCL on the tensor's device memory ([`NcclAllReduce::all_reduce_mean_device`], on
//!   libtorch's default stream) when the model is on CUDA. Every rank then applies the
//!   same SGD step, so parameters and momentum stay identical (the ring gives
//!   bit-identical sums on every rank).
//! - **Start**: after loading the checkpoint (if any) every rank checks it resumed the
//!   same epoch as rank 0 and receives rank 0's parameters (broadcast), so ranks that
//!   built their models differently still start equal.
//! - **Epoch end**: non-trainable float buffers (batch-norm running mean and variance)
//!   are averaged over ranks, since each rank saw only its slices; the epoch's loss,
//!   accuracy and image counts are summed. BN statistics per batch are computed on the
//!   slice, so a BN model is not bit-equivalent to a 1-rank run (as in PyTorch DDP).
//! - **Writes**: only rank 0 evaluates on the test set, appends `metrics.jsonl` and writes
//!   the checkpoint; all ranks read the checkpoint directory (shared storage) at start.
//! - **Dropout and other libtorch randomness** is reseeded per (seed, epoch, rank), so it
//!   is reproducible but not identical to a 1-rank run.
//!
//! On a failed collective the loop returns [`TrainError::Collective`]; the CLI exits with
//! [`EXIT_GANG_LOST`] so a launcher (`slurm/train.sbatch`, `overinterp train
//! --local-ranks N`) restarts the gang from the last checkpoint with the ranks that
//! remain and a fresh rendezvous directory.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use overinterp_cluster::collective::{
    AllReduce, CollectiveError, FileRendezvous, NcclAllReduce, RingAllReduce, RingConfig,
};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::{TrainError, TrainJob};
use crate::util::SplitMix64;

/// Exit status of a rank whose gang lost a member (a failed collective): "restart the
/// gang from the last checkpoint". 75 is `EX_TEMPFAIL` of sysexits.h: the failure is
/// not this rank's, a retry can succeed. Other failures exit with 1.
pub const EXIT_GANG_LOST: i32 = 75;

/// Which all-reduce implementation a gang uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The CPU ring over TCP (CPU models; works for CUDA models through host copies).
    Ring,
    /// NCCL on the GPU (CUDA models).
    Nccl,
}

impl Backend {
    /// NCCL for CUDA devices, the ring otherwise.
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Ring,
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ring" | "cpu" => Ok(Backend::Ring),
            "nccl" => Ok(Backend::Nccl),
            other => Err(format!("unknown backend {other:?}; use ring or nccl")),
        }
    }
}

/// How to form a gang.
#[derive(Clone, Debug)]
pub struct GangConfig {
    pub rank: usize,
    pub world_size: usize,
    /// Rendezvous directory shared by all ranks, fresh for each gang attempt.
    pub rendezvous_dir: PathBuf,
    /// The address other ranks reach this one at (the ring listens there).
    pub host: IpAddr,
    pub backend: Backend,
    /// CUDA device of this rank (NCCL backend).
    pub device: Device,
    /// How long to wait for the other ranks to publish their addresses.
    pub rendezvous_timeout: Duration,
    pub ring: RingConfig,
}

impl GangConfig {
    /// A CPU ring gang over loopback with default timeouts.
    pub fn local(rank: usize, world_size: usize, rendezvous_dir: impl Into<PathBuf>) -> Self {
        Self {
            rank,
            world_size,
            rendezvous_dir: rendezvous_dir.into(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            backend: Backend::Ring,
            device: Device::Cpu,
            rendezvous_timeout: Duration::from_secs(300),
            ring: RingConfig::default(),
        }
    }
}

/// The communicator behind a gang.
enum Comm {
    Ring(RingAllReduce),
    Nccl(NcclAllReduce),
}

/// A joined gang: the communicator plus timing of its collectives.
pub struct Gang {
    comm: Comm,
    rank: usize,
    world_size: usize,
    /// Seconds spent in gradient all-reduces (flatten, collective, unflatten) so far.
    allreduce_seconds: f64,
    /// Gradient all-reduces so far.
    allreduce_steps: u64,
}

impl Gang {
    /// Publishes this rank in the rendezvous directory, waits for the others and
    /// connects the communicator. Blocks until the whole gang is there (or times out).
    pub fn join(config: &GangConfig) -> Result<Self, CollectiveError> {
        let rendezvous =
            FileRendezvous::new(&config.rendezvous_dir, config.rank, config.world_size)?
                .with_timeout(config.rendezvous_timeout);
        let comm = match config.backend {
            Backend::Ring => {
                let bind = SocketAddr::new(config.host, 0);
                let listener = TcpListener::bind(bind).map_err(|e| CollectiveError::Connect {
                    rank: config.rank,
                    peer: config.rank,
                    addr: bind,
                    detail: format!(
                        "cannot listen on {bind}: {e}; set --ring-host to an address of this node"
                    ),
                })?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| CollectiveError::Connect {
                        rank: config.rank,
                        peer: config.rank,
                        addr: bind,
                        detail: format!("listen address unknown: {e}"),
                    })?;
                let rv = rendezvous.exchange(addr, None)?;
                Comm::Ring(RingAllReduce::connect(listener, &rv, config.ring.clone())?)
            }
            Backend::Nccl => {
                let ordinal = match config.device {
                    Device::Cuda(n) => n,
                    other => {
                        return Err(CollectiveError::Cuda {
                            ordinal: 0,
                            what: "choosing the device",
                            detail: format!("the NCCL backend needs a CUDA model, got {other:?}"),
                        })
                    }
                };
                let id = if config.rank == 0 {
                    Some(NcclAllReduce::unique_id()?)
                } else {
                    None
                };
                // NCCL bootstraps its own sockets; the published address only names
                // this rank in the rendezvous.
                let addr = SocketAddr::new(config.host, 1);
                let rv = rendezvous.exchange(addr, id)?;
                Comm::Nccl(NcclAllReduce::new(&rv, ordinal)?)
            }
        };
        Ok(Self {
            comm,
            rank: config.rank,
            world_size: config.world_size,
            allreduce_seconds: 0.0,
            allreduce_steps: 0,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Seconds spent in gradient all-reduces, and how many there were.
    pub fn allreduce_time(&self) -> (f64, u64) {
        (self.allreduce_seconds, self.allreduce_steps)
    }

    fn host(&mut self) -> &mut dyn AllReduce {
        match &mut self.comm {
            Comm::Ring(r) => r,
            Comm::Nccl(n) => n,
        }
    }

    /// Averages a contiguous f32 tensor in place over the gang.
    fn all_reduce_tensor(&mut self, flat: &mut Tensor) -> Result<(), CollectiveError> {
        if let (Comm::Nccl(nccl), Device::Cuda(_)) = (&mut self.comm, flat.device()) {
            let len = flat.numel();
            // SAFETY: `flat` is a contiguous CUDA f32 tensor of `len` elements owned by
            // this function's caller until it returns; libtorch queues its work on the
            // legacy default stream (0), so the all-reduce is ordered after the copies
            // that filled `flat` and before the ones that read it.
            return unsafe { nccl.all_reduce_mean_device(flat.data_ptr() as u64, len, 0) };
        }
        let mut host: Vec<f32> =
            Vec::<f32>::try_from(&flat.to_device(Device::Cpu)).map_err(|e| {
                CollectiveError::Protocol {
                    peer: self.rank,
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                    detail: format!("gradient buffer is not f32: {e}"),
                }
            })?;
        self.host().all_reduce_mean_f32(&mut host)?;
        let back = Tensor::from_slice(&host).to_device(flat.device());
        tch::no_grad(|| flat.copy_(&back));
        Ok(())
    }

    fn broadcast_tensor(&mut self, flat: &mut Tensor) -> Result<(), CollectiveError> {
        let mut host: Vec<f32> = Vec::<f32>::try_from(&flat.to_device(Device::Cpu))
            .unwrap_or_else(|_| vec![0.0; flat.numel()]);
        self.host().broadcast_f32(&mut host, 0)?;
        let back = Tensor::from_slice(&host).to_device(flat.device());
        tch::no_grad(|| flat.copy_(&back));
        Ok(())
    }
}

/// Trains `job` as rank `gang.rank()` of the gang; see the module docs for what each
/// rank does. Returns the metrics of the epochs run now (summed over the gang; the test
/// accuracy only on rank 0).
pub fn train_data_parallel(
    job: TrainJob<'_>,
    gang: &mut Gang,
) -> Result<Vec<super::EpochMetrics>, TrainError> {
    super::train_loop(job, Some(gang))
}

/// Wraps a collective failure with this rank's place in the gang.
pub(crate) fn collective(gang: &Gang, source: CollectiveError) -> TrainError {
    TrainError::Collective {
        rank: gang.rank,
        world_size: gang.world_size,
        source,
    }
}

/// Trainable parameters sorted by name, as [`super::sgd::Sgd`] sees them.
fn trainable(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// Non-trainable floating-point variables (batch-norm running statistics), sorted.
fn float_buffers(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut bufs: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad() && t.is_floating_point())
        .collect();
    bufs.sort_by(|a, b| a.0.cmp(&b.0));
    bufs
}

fn flatten(tensors: &[Tensor], device: Device) -> Tensor {
    if tensors.is_empty() {
        return Tensor::zeros([0], (Kind::Float, device));
    }
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.detach().to_kind(Kind::Float).reshape([-1]))
        .collect();
    Tensor::cat(&parts, 0).contiguous()
}

fn unflatten_into(flat: &Tensor, targets: &mut [Tensor]) {
    tch::no_grad(|| {
        let mut offset = 0;
        for t in targets.iter_mut() {
            let n = t.numel() as i64;
            let part = flat.narrow(0, offset, n).view_as(t).to_kind(t.kind());
            t.copy_(&part);
            offset += n;
        }
    })
}

/// Start of training: every rank must resume the same epoch as rank 0, and takes rank
/// 0's parameters and buffers.
pub(crate) fn sync_start(
    gang: &mut Gang,
    vs: &VarStore,
    start_epoch: usize,
) -> Result<(), TrainError> {
    let device = vs.device();
    let mut epoch = Tensor::from_slice(&[start_epoch as f32]);
    gang.broadcast_tensor(&mut epoch)
        .map_err(|e| collective(gang, e))?;
    let root_epoch = epoch.double_value(&[0]) as usize;
    if root_epoch != start_epoch {
        return Err(TrainError::Invalid(format!(
            "rank {} resumes at epoch {start_epoch} but rank 0 at epoch {root_epoch}; all ranks must see the same checkpoint directory (shared storage)",
            gang.rank
        )));
    }
    let mut vars: Vec<Tensor> = trainable(vs)
        .into_iter()
        .chain(float_buffers(vs))
        .map(|(_, t)| t)
        .collect();
    let mut flat = flatten(&vars, device);
    gang.broadcast_tensor(&mut flat)
        .map_err(|e| collective(gang, e))?;
    unflatten_into(&flat, &mut vars);
    Ok(())
}

/// After backward: replaces every trainable gradient by its mean over the gang, with one
/// collective on one flat buffer.
pub(crate) fn all_reduce_gradients(gang: &mut Gang, vs: &VarStore) -> Result<(), TrainError> {
    let started = Instant::now();
    let params = trainable(vs);
    let device = vs.device();
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| {
            let g = p.grad();
            if g.defined() {
                g
            } else {
                p.zeros_like()
            }
        })
        .collect();
    let mut flat = flatten(&grads, device);
    gang.all_reduce_tensor(&mut flat)
        .map_err(|e| collective(gang, e))?;
    let mut targets: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
    if targets.iter().any(|g| !g.defined()) {
        return Err(TrainError::Invalid(
            "a trainable parameter has no gradient after backward; data-parallel training needs every parameter in the loss".into(),
        ));
    }
    unflatten_into(&flat, &mut targets);
    gang.allreduce_seconds += started.elapsed().as_secs_f64();
    gang.allreduce_steps += 1;
    Ok(())
}

/// End of an epoch: averages the running statistics and sums `totals` (loss sum,
/// correct, seen) over the gang.
pub(crate) fn sync_epoch_end(
    gang: &mut Gang,
    vs: &VarStore,
    totals: [f64; 3],
) -> Result<[f64; 3], TrainError> {
    let device = vs.device();
    let mut bufs: Vec<Tensor> = float_buffers(vs).into_iter().map(|(_, t)| t).collect();
    let n = gang.world_size as f64;
    let stats = Tensor::from_slice(&[totals[0] as f32, totals[1] as f32, totals[2] as f32])
        .to_device(device);
    let mut flat = Tensor::cat(&[flatten(&bufs, device), stats], 0);
    gang.all_reduce_tensor(&mut flat)
        .map_err(|e| collective(gang, e))?;
    let len = flat.numel() as i64;
    unflatten_into(&flat.narrow(0, 0, len - 3), &mut bufs);
    let tail = Vec::<f32>::try_from(&flat.narrow(0, len - 3, 3).to_device(Device::Cpu))
        .map_err(TrainError::Torch)?;
    Ok([
        tail[0] as f64 * n,
        (tail[1] as f64 * n).round(),
        (tail[2] as f64 * n).round(),
    ])
}

/// Rank `rank`'s rows of a global batch of `len` rows: `[r·len/N, (r+1)·len/N)`.
pub fn slice_of(len: usize, rank: usize, world_size: usize) -> std::ops::Range<usize> {
    (rank * len / world_size)..((rank + 1) * len / world_size)
}

/// Draws from `rng` what [`super::augment::crop_and_flip`] draws for `rows` images, so
/// a rank skips the other ranks' augmentation and each image keeps its 1-rank crop.
pub(crate) fn skip_augment_draws(rng: &mut SplitMix64, rows: usize, crop_padding: i64) {
    let side = (2 * crop_padding + 1) as usize;
    for _ in 0..rows {
        rng.below(side);
        rng.below(side);
        rng.below(2);
    }
}

/// Resolves the address other nodes reach this one at: `explicit` if given, else the
/// first non-loopback IPv4 address of this host's name when running under Slurm, else
/// loopback (all ranks on this machine).
pub fn resolve_host(explicit: Option<&str>) -> Result<IpAddr, String> {
    if let Some(h) = explicit {
        if let Ok(ip) = h.parse::<IpAddr>() {
            return Ok(ip);
        }
        return (h, 0)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve --ring-host {h}: {e}"))?
            .map(|a| a.ip())
            .find(|ip| ip.is_ipv4())
            .ok_or_else(|| format!("--ring-host {h} has no IPv4 address"));
    }
    if std::env::var_os("SLURM_PROCID").is_none() {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let name = std::env::var("SLURMD_NODENAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .ok_or("cannot tell this node's name; pass --ring-host")?;
    (name.as_str(), 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve this node's name {name}: {e}; pass --ring-host"))?
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .ok_or_else(|| {
            format!("node name {name} has no non-loopback IPv4 address; pass --ring-host")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_batch_once_and_differ_by_at_most_one() {
        for len in 0..20 {
            for n in 1..5 {
                let ranges: Vec<_> = (0..n).map(|r| slice_of(len, r, n)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[n - 1].end, len);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<_> = ranges.iter().map(|r| r.len()).collect();
                assert!(
                    sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                    "{sizes:?}"
                );
            }
        }
        // 10 rows over 3 ranks: [0,3) [3,6) [6,10).
        assert_eq!(slice_of(10, 1, 3), 3..6);
        assert_eq!(slice_of(10, 2, 3), 6..10);
    }
}
