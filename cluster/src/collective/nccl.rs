//! [`NcclAllReduce`]: the GPU backend, NCCL through `cudarc` loaded at run time.
//!
//! `cudarc` is built with `dynamic-loading`: nothing links against CUDA or NCCL, so the
//! crate builds and its CPU paths run on machines without either. `cudarc` panics when a
//! library it needs is missing, so every entry point here first checks that both the
//! CUDA driver (`libcuda.so`) and NCCL (`libnccl.so`, the unversioned name: the setup
//! script links it next to pip's `libnccl.so.2`) can be loaded, and returns
//! [`CollectiveError::LibraryUnavailable`] otherwise.
//!
//! Rank 0 creates the unique id ([`NcclAllReduce::unique_id`]) before the rendezvous;
//! it reaches the other ranks in [`Rendezvous::nccl_id`], and NCCL bootstraps its own
//! connections from it (the ring addresses are not used).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut};
use cudarc::nccl::result as nccl;
use cudarc::nccl::sys as nccl_sys;

use super::rendezvous::NCCL_ID_BYTES;
use super::{AllReduce, CollectiveError, Rendezvous};

/// A communicator of one GPU per rank, created with `ncclCommInitRank`.
///
/// Host-buffer collectives ([`AllReduce`]) copy through a device staging buffer; the
/// trainer's gradients already live on the GPU and go through
/// [`NcclAllReduce::all_reduce_mean_device`] without copies.
pub struct NcclAllReduce {
    /// This rank.
    rank: usize,
    /// Ranks in the communicator.
    world_size: usize,
    /// The CUDA device this rank uses.
    ordinal: usize,
    /// The device's primary context; bound to the calling thread before each NCCL call,
    /// because the communicator may move between threads.
    ctx: Arc<CudaContext>,
    /// The stream host-buffer collectives run on.
    stream: Arc<CudaStream>,
    /// The NCCL communicator; aborted on drop.
    comm: nccl_sys::ncclComm_t,
    /// Device staging buffer for host-buffer collectives, grown on demand.
    staging: Option<CudaSlice<f32>>,
    /// The first failure: NCCL's state is unknown after it.
    poisoned: Option<String>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are
// not concurrent; every method takes `&mut self`, and the CUDA context is bound to the
// calling thread before each call.
unsafe impl Send for NcclAllReduce {}

impl NcclAllReduce {
    /// Creates the NCCL unique id; rank 0 calls this and publishes the result in the
    /// rendezvous.
    pub fn unique_id() -> Result<[u8; NCCL_ID_BYTES], CollectiveError> {
        ensure_nccl_library()?;
        let id = nccl::get_uniqueid().map_err(|e| nccl_error(0, "creating the unique id", e))?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// The NCCL version the loaded library reports, e.g. `22703` for 2.27.3.
    pub fn nccl_version() -> Result<i32, CollectiveError> {
        ensure_nccl_library()?;
        nccl::get_nccl_version().map_err(|e| nccl_error(0, "querying the version", e))
    }

    /// Joins the communicator of `rendezvous` on CUDA device `cuda_device_ordinal`.
    /// Blocks until every rank has joined (NCCL's bootstrap).
    pub fn new(
        rendezvous: &Rendezvous,
        cuda_device_ordinal: usize,
    ) -> Result<Self, CollectiveError> {
        rendezvous.validate()?;
        let (rank, world_size, ordinal) =
            (rendezvous.rank, rendezvous.world_size, cuda_device_ordinal);
        let id = rendezvous
            .nccl_id
            .ok_or(CollectiveError::MissingNcclId { rank })?;
        let (nranks, rank_c) = match (c_int::try_from(world_size), c_int::try_from(rank)) {
            (Ok(n), Ok(r)) => (n, r),
            _ => {
                return Err(CollectiveError::InvalidRank {
                    rank,
                    world_size,
                    context: " (NCCL takes 32-bit ranks)",
                })
            }
        };
        ensure_cuda_driver()?;
        ensure_nccl_library()?;
        let cuda = |what: &'static str| {
            move |e: cudarc::driver::DriverError| CollectiveError::Cuda {
                ordinal,
                what,
                detail: e.to_string(),
            }
        };
        let ctx = CudaContext::new(ordinal).map_err(cuda("opening the device"))?;
        let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
        ctx.bind_to_thread().map_err(cuda("binding the context"))?;
        let unique = nccl_sys::ncclUniqueId {
            internal: id.map(|b| b as c_char),
        };
        let mut comm: nccl_sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the id came from ncclGetUniqueId on rank 0.
        unsafe { nccl::comm_init_rank(&mut comm, nranks, unique, rank_c) }
            .map_err(|e| nccl_error(rank, "joining the communicator (ncclCommInitRank)", e))?;
        tracing::info!(rank, world_size, ordinal, "NCCL communicator ready");
        Ok(Self {
            rank,
            world_size,
            ordinal,
            ctx,
            stream,
            comm,
            staging: None,
            poisoned: None,
        })
    }

    /// Averages `len` f32s at device address `ptr` in place over all ranks, enqueued on
    /// the CUDA stream `stream` (a raw `cudaStream_t`; 0 is the legacy default stream).
    /// Returns once enqueued: work queued later on `stream` sees the result, the host
    /// must synchronize `stream` before reading it. Uses `ncclAvg` (sum, then one
    /// division by the world size on each element).
    ///
    /// # Safety
    ///
    /// `ptr` must be a device allocation on this communicator's device holding at least
    /// `len` f32s, valid until the operation has completed on `stream`; `stream` must be
    /// a live stream of the same device (or 0). The ML side passes a CUDA tensor's
    /// `data_ptr()` and torch's current stream.
    pub unsafe fn all_reduce_mean_device(
        &mut self,
        ptr: u64,
        len: usize,
        stream: u64,
    ) -> Result<(), CollectiveError> {
        self.check_usable()?;
        self.bind()?;
        // SAFETY: the caller guarantees `ptr`, `len` and `stream`.
        let result = unsafe {
            nccl::all_reduce(
                ptr as *const c_void,
                ptr as *mut c_void,
                len,
                nccl_sys::ncclDataType_t::ncclFloat32,
                nccl_sys::ncclRedOp_t::ncclAvg,
                self.comm,
                stream as nccl_sys::cudaStream_t,
            )
        };
        result
            .map(|_| ())
            .map_err(|e| self.fail(nccl_error(self.rank, "all-reduce", e)))
    }

    /// The CUDA device this rank uses.
    pub fn device_ordinal(&self) -> usize {
        self.ordinal
    }

    fn check_usable(&self) -> Result<(), CollectiveError> {
        match &self.poisoned {
            Some(first) => Err(CollectiveError::Poisoned {
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, err: CollectiveError) -> CollectiveError {
        tracing::warn!(rank = self.rank, error = %err, "NCCL collective failed");
        self.poisoned = Some(err.to_string());
        err
    }

    fn bind(&mut self) -> Result<(), CollectiveError> {
        let ordinal = self.ordinal;
        self.ctx
            .bind_to_thread()
            .map_err(|e| CollectiveError::Cuda {
                ordinal,
                what: "binding the context to this thread",
                detail: e.to_string(),
            })
    }

    /// Copies `buf` to the device, runs `collective(device_ptr, stream)` and copies the
    /// result back, synchronously.
    fn host_collective(
        &mut self,
        buf: &mut [f32],
        what: &'static str,
        collective: impl FnOnce(
            *mut c_void,
            nccl_sys::cudaStream_t,
            nccl_sys::ncclComm_t,
        ) -> Result<nccl::NcclStatus, nccl::NcclError>,
    ) -> Result<(), CollectiveError> {
        self.check_usable()?;
        self.bind()?;
        let (ordinal, rank) = (self.ordinal, self.rank);
        let cuda = |what: &'static str| {
            move |e: cudarc::driver::DriverError| CollectiveError::Cuda {
                ordinal,
                what,
                detail: e.to_string(),
            }
        };
        let result = (|| {
            // NCCL needs a non-empty buffer address even for zero elements.
            let len = buf.len().max(1);
            if self.staging.as_ref().is_none_or(|s| s.len() < len) {
                self.staging = Some(
                    self.stream
                        .alloc_zeros::<f32>(len)
                        .map_err(cuda("allocating the staging buffer"))?,
                );
            }
            let stream = Arc::clone(&self.stream);
            let comm = self.comm;
            let Some(staging) = self.staging.as_mut() else {
                return Ok(());
            };
            let mut view = staging.slice_mut(0..buf.len());
            stream
                .memcpy_htod(&*buf, &mut view)
                .map_err(cuda("copying to the device"))?;
            {
                let (dptr, _sync) = view.device_ptr_mut(&stream);
                collective(
                    dptr as *mut c_void,
                    stream.cu_stream() as nccl_sys::cudaStream_t,
                    comm,
                )
                .map_err(|e| nccl_error(rank, what, e))?;
            }
            stream
                .memcpy_dtoh(&view, buf)
                .map_err(cuda("copying from the device"))?;
            stream
                .synchronize()
                .map_err(cuda("synchronizing the stream"))
        })();
        result.map_err(|e| self.fail(e))
    }
}

impl AllReduce for NcclAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_mean_f32(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let len = buf.len();
        self.host_collective(buf, "all-reduce", |ptr, stream, comm| unsafe {
            // SAFETY: `ptr` is the staging buffer holding `len` floats on this device.
            nccl::all_reduce(
                ptr,
                ptr,
                len,
                nccl_sys::ncclDataType_t::ncclFloat32,
                nccl_sys::ncclRedOp_t::ncclAvg,
                comm,
                stream,
            )
        })
    }

    /// A one-element all-reduce, waited for: no rank finishes it before all started it.
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        let mut token = [0f32; 1];
        self.all_reduce_mean_f32(&mut token)
    }

    fn broadcast_f32(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let Ok(root_c) = c_int::try_from(root) else {
            return Err(CollectiveError::InvalidRank {
                rank: root,
                world_size: self.world_size,
                context: ", as broadcast root",
            });
        };
        if root >= self.world_size {
            return Err(CollectiveError::InvalidRank {
                rank: root,
                world_size: self.world_size,
                context: ", as broadcast root",
            });
        }
        let len = buf.len();
        self.host_collective(buf, "broadcast", |ptr, stream, comm| unsafe {
            // SAFETY: in place on the staging buffer holding `len` floats.
            nccl::broadcast(
                ptr,
                ptr,
                len,
                nccl_sys::ncclDataType_t::ncclFloat32,
                root_c,
                comm,
                stream,
            )
        })
    }
}

impl Drop for NcclAllReduce {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        // SAFETY: `comm` came from ncclCommInitRank and is not used after this.
        if let Err(e) = unsafe { nccl::comm_abort(self.comm) } {
            tracing::warn!(rank = self.rank, error = %describe(&e), "ncclCommAbort failed");
        }
    }
}

impl std::fmt::Debug for NcclAllReduce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclAllReduce")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("ordinal", &self.ordinal)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// Fails unless the CUDA driver library can be loaded (cudarc would panic).
fn ensure_cuda_driver() -> Result<(), CollectiveError> {
    // SAFETY: only tries to dlopen the candidates.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        return Ok(());
    }
    Err(CollectiveError::LibraryUnavailable {
        library: "the CUDA driver (libcuda.so)",
        detail: format!(
            "none of {:?} is on the loader path; this node has no NVIDIA driver, so use the \
             CPU ring backend here or run on a GPU node",
            cudarc::get_lib_name_candidates("cuda")
        ),
    })
}

/// Fails unless NCCL can be loaded (cudarc would panic).
fn ensure_nccl_library() -> Result<(), CollectiveError> {
    // SAFETY: only tries to dlopen the candidates.
    if unsafe { nccl_sys::is_culib_present() } {
        return Ok(());
    }
    Err(CollectiveError::LibraryUnavailable {
        library: "NCCL (libnccl.so)",
        detail: format!(
            "none of {:?} is on the loader path; pip's nvidia-nccl ships only libnccl.so.2: \
             run scripts/setup (it links libnccl.so next to it) and source scripts/env",
            cudarc::get_lib_name_candidates("nccl")
        ),
    })
}

fn describe(e: &nccl::NcclError) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let text = unsafe {
        let p = nccl_sys::ncclGetErrorString(e.0);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    format!("{:?}: {text}", e.0)
}

fn nccl_error(rank: usize, what: &'static str, e: nccl::NcclError) -> CollectiveError {
    CollectiveError::Nccl {
        rank,
        what,
        detail: describe(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// Without a GPU (CI, this build machine) joining must fail with a typed error that
    /// names the missing library, never panic; with a GPU, an impossible device ordinal
    /// must be a typed CUDA error. Either way no panic escapes `new`.
    #[test]
    fn missing_cuda_or_bad_device_is_a_typed_error_not_a_panic() {
        let rendezvous = Rendezvous {
            rank: 0,
            world_size: 1,
            peers: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            nccl_id: Some([0u8; NCCL_ID_BYTES]),
        };
        let outcome = std::panic::catch_unwind(|| NcclAllReduce::new(&rendezvous, 4096));
        let err = outcome
            .expect("NcclAllReduce::new panicked")
            .expect_err("device 4096 does not exist");
        // SAFETY: only dlopen attempts.
        let (cuda, nccl) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                nccl_sys::is_culib_present(),
            )
        };
        match (cuda, nccl, &err) {
            (false, _, CollectiveError::LibraryUnavailable { library, .. }) => {
                assert!(library.contains("libcuda"), "{err}")
            }
            (true, false, CollectiveError::LibraryUnavailable { library, .. }) => {
                assert!(library.contains("libnccl"), "{err}")
            }
            (true, true, CollectiveError::Cuda { ordinal: 4096, .. }) => {}
            _ => panic!("unexpected error with cuda={cuda} nccl={nccl}: {err}"),
        }
    }

    /// `ncclGetUniqueId` needs no GPU: where NCCL loads, ids are created and differ
    /// between calls (each names a fresh bootstrap endpoint); where it does not, the
    /// error names the library.
    #[test]
    fn unique_id_is_created_where_nccl_loads_and_refused_clearly_elsewhere() {
        // SAFETY: only dlopen attempts.
        let present = unsafe { nccl_sys::is_culib_present() };
        let first = std::panic::catch_unwind(NcclAllReduce::unique_id).expect("unique_id panicked");
        match (present, first) {
            (true, Ok(a)) => {
                let b = NcclAllReduce::unique_id().expect("second id");
                assert!(a.iter().any(|x| *x != 0), "id is all zeros");
                assert_ne!(a, b, "two ids are identical");
            }
            (false, Err(CollectiveError::LibraryUnavailable { library, detail })) => {
                assert!(library.contains("libnccl.so"), "{library}");
                assert!(detail.contains("scripts/setup"), "{detail}");
            }
            (present, other) => panic!("NCCL present={present}, got {other:?}"),
        }
    }

    #[test]
    fn missing_nccl_id_is_refused_before_touching_cuda() {
        let rendezvous = Rendezvous {
            rank: 1,
            world_size: 2,
            peers: vec![SocketAddr::from(([127, 0, 0, 1], 1)); 2],
            nccl_id: None,
        };
        let err = NcclAllReduce::new(&rendezvous, 0).expect_err("no id");
        assert!(
            matches!(err, CollectiveError::MissingNcclId { rank: 1 }),
            "{err}"
        );
    }
}
