//! Gradient all-reduce for data-parallel training.
//!
//! Training is a gang task: every rank computes gradients on its own shard of a batch,
//! then all ranks average them with [`AllReduce::all_reduce_mean_f32`] so each applies
//! the same update. Two backends implement [`AllReduce`]:
//!
//! - [`RingAllReduce`]: CPU buffers over TCP, a ring reduce-scatter + all-gather. Every
//!   element is summed in the same order on whichever rank owns it and then copied, so
//!   all ranks end with bit-identical parameters and never drift apart.
//! - `NcclAllReduce` (cargo feature `nccl`): GPU buffers through NCCL, loaded at run
//!   time with `cudarc`, so the crate builds and runs on machines without CUDA.
//!
//! Ranks find each other through a [`Rendezvous`]: the listen address of every rank and
//! the NCCL unique id rank 0 created. [`FileRendezvous`] builds one through a shared
//! directory (Slurm jobs share storage); the leader-based one over QUIC produces the
//! same struct.
//!
//! A collective that fails returns a [`CollectiveError`] naming the rank at fault
//! ([`CollectiveError::failed_rank`]); the communicator is then poisoned, and the
//! trainer restarts the gang from its last checkpoint.
//!
//! # Layout
//!
//! - [`error`]: the error type, [`CollectiveError`].
//! - [`rendezvous`]: [`Rendezvous`] and [`FileRendezvous`].
//! - [`ring`]: [`RingAllReduce`], the CPU backend, and its [`RingConfig`].
//! - `wire`: the ring's frame header (private).
//! - `nccl`: `NcclAllReduce` (feature `nccl`).

pub mod error;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;
pub mod ring;
mod wire;

pub use error::CollectiveError;
#[cfg(feature = "nccl")]
pub use nccl::NcclAllReduce;
pub use rendezvous::{FileRendezvous, Rendezvous};
pub use ring::{RingAllReduce, RingConfig};

/// A communicator over a fixed gang of `world_size` ranks.
///
/// Every rank must call the same collectives, in the same order, on buffers of the same
/// length; a collective returns once this rank's part is done. After an error the
/// communicator is unusable (later calls return [`CollectiveError::Poisoned`]).
pub trait AllReduce: Send {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// How many ranks the gang has.
    fn world_size(&self) -> usize;

    /// Replaces `buf` on every rank by the element-wise mean over all ranks. All ranks
    /// end with bit-identical buffers. With one rank this is a no-op.
    fn all_reduce_mean_f32(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError>;

    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CollectiveError>;

    /// Copies `root`'s `buf` into `buf` on every other rank (initial weights, so all
    /// ranks start from the same model).
    fn broadcast_f32(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError>;
}

impl<T: AllReduce + ?Sized> AllReduce for Box<T> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn all_reduce_mean_f32(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        (**self).all_reduce_mean_f32(buf)
    }
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        (**self).barrier()
    }
    fn broadcast_f32(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        (**self).broadcast_f32(buf, root)
    }
}
