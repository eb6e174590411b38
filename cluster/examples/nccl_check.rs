//! GPU check of the NCCL backend, for `scripts/gpu-check` on a machine with an NVIDIA
//! GPU, its driver, and pip's NCCL reachable as `libnccl.so` (source `scripts/env`).
//!
//! 1. Loads NCCL, prints its version, creates a unique id.
//! 2. A world of 1 on device 0: `all_reduce_mean_device` on a device buffer (the path the
//!    trainer uses with tensor data pointers) must leave the integer-valued buffer
//!    bit-identical (the mean over one rank is the value); the host-buffer collectives
//!    (all-reduce, broadcast, barrier) must too. Times an 11.2M-float (ResNet18) device
//!    all-reduce.
//! 3. With 2 or more GPUs: one rank per GPU in threads; the device all-reduce must give
//!    the mean of integer-valued contributions (exact for 2, 4, 8 GPUs).
//!
//! Prints one `PASS`/`FAIL` line per check and exits non-zero on any failure.
//! Run: `cargo run --release -p overinterp-cluster --example nccl_check`.

#[cfg(not(feature = "nccl"))]
fn main() {
    eprintln!("FAIL built without the `nccl` feature of overinterp-cluster");
    std::process::exit(1);
}

#[cfg(feature = "nccl")]
fn main() {
    match gpu::run() {
        Ok(0) => println!("nccl_check: all checks passed"),
        Ok(failures) => {
            println!("nccl_check: {failures} check(s) failed");
            std::process::exit(1);
        }
        Err(e) => {
            println!("FAIL nccl_check could not run: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(feature = "nccl")]
mod gpu {
    use std::net::SocketAddr;
    use std::time::Instant;

    use cudarc::driver::{CudaContext, DevicePtr};
    use overinterp_cluster::collective::{AllReduce, NcclAllReduce, Rendezvous};

    type Error = Box<dyn std::error::Error + Send + Sync>;

    /// Integer-valued contribution of `rank` at `i`: exact in f32, and so are their sums
    /// for a few ranks.
    fn value(rank: usize, i: usize) -> f32 {
        ((i * 31 + rank * 17) % 1001) as f32 - 500.0
    }

    fn check(name: &str, ok: bool, detail: String, failures: &mut usize) {
        if ok {
            println!("PASS {name} {detail}");
        } else {
            println!("FAIL {name} {detail}");
            *failures += 1;
        }
    }

    fn rendezvous(rank: usize, world_size: usize, id: [u8; 128]) -> Rendezvous {
        Rendezvous {
            rank,
            world_size,
            // NCCL bootstraps from the unique id; the ring addresses are unused here.
            peers: vec![SocketAddr::from(([127, 0, 0, 1], 1)); world_size],
            nccl_id: Some(id),
        }
    }

    /// Runs a device all-reduce of `len` floats on rank `rank` of `comm`, and returns the
    /// result and the time to completion.
    fn device_all_reduce(
        comm: &mut NcclAllReduce,
        rank: usize,
        len: usize,
    ) -> Result<(Vec<f32>, f64), Error> {
        let ctx = CudaContext::new(comm.device_ordinal())?;
        let stream = ctx.new_stream()?;
        let host: Vec<f32> = (0..len).map(|i| value(rank, i)).collect();
        let buf = stream.clone_htod(&host)?;
        stream.synchronize()?;
        let start = Instant::now();
        {
            let (ptr, _sync) = buf.device_ptr(&stream);
            // SAFETY: `buf` holds `len` f32s on this device and outlives the operation
            // (we synchronize `stream` before dropping it); `stream` is a live stream.
            unsafe { comm.all_reduce_mean_device(ptr, len, stream.cu_stream() as u64)? };
        }
        stream.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        Ok((stream.clone_dtoh(&buf)?, secs))
    }

    pub fn run() -> Result<usize, Error> {
        let mut failures = 0;
        let version = NcclAllReduce::nccl_version()?;
        println!("NCCL version code {version}");
        let id = NcclAllReduce::unique_id()?;
        check(
            "unique_id",
            id.iter().any(|b| *b != 0),
            "is not all zeros".into(),
            &mut failures,
        );

        // World of 1.
        let mut comm = NcclAllReduce::new(&rendezvous(0, 1, id), 0)?;
        let len = 1_000_003;
        let (out, _) = device_all_reduce(&mut comm, 0, len)?;
        let bad = (0..len).find(|&i| out[i].to_bits() != value(0, i).to_bits());
        check(
            "world1_device_all_reduce",
            bad.is_none(),
            format!("first wrong index {bad:?}"),
            &mut failures,
        );

        let mut host: Vec<f32> = (0..1000).map(|i| value(0, i)).collect();
        comm.all_reduce_mean_f32(&mut host)?;
        let same = host.iter().enumerate().all(|(i, x)| *x == value(0, i));
        check("world1_host_all_reduce", same, String::new(), &mut failures);
        comm.broadcast_f32(&mut host, 0)?;
        let same = host.iter().enumerate().all(|(i, x)| *x == value(0, i));
        check("world1_host_broadcast", same, String::new(), &mut failures);
        comm.barrier()?;
        check("world1_barrier", true, String::new(), &mut failures);
        let bad_root = comm.broadcast_f32(&mut host, 1).is_err();
        check(
            "world1_bad_root_is_error",
            bad_root,
            String::new(),
            &mut failures,
        );

        let resnet18 = 11_200_000;
        let _ = device_all_reduce(&mut comm, 0, resnet18)?;
        let (_, secs) = device_all_reduce(&mut comm, 0, resnet18)?;
        println!(
            "TIME world1_device_all_reduce_resnet18 {:.3} ms ({:.1} GB/s algbw)",
            secs * 1e3,
            4.0 * resnet18 as f64 / secs / 1e9
        );
        drop(comm);

        // One rank per GPU.
        let gpus = CudaContext::device_count()? as usize;
        if gpus < 2 {
            println!("SKIP multi_gpu_device_all_reduce: {gpus} GPU(s)");
            return Ok(failures);
        }
        let id = NcclAllReduce::unique_id()?;
        let len = 270_001;
        let handles: Vec<_> = (0..gpus)
            .map(|rank| {
                std::thread::spawn(move || -> Result<Vec<f32>, Error> {
                    let mut comm = NcclAllReduce::new(&rendezvous(rank, gpus, id), rank)?;
                    Ok(device_all_reduce(&mut comm, rank, len)?.0)
                })
            })
            .collect();
        for (rank, handle) in handles.into_iter().enumerate() {
            let out = handle.join().map_err(|_| "rank thread panicked")??;
            let bad = (0..len).find(|&i| {
                let sum: i64 = (0..gpus).map(|r| value(r, i) as i64).sum();
                // ncclAvg may scale by 1/n before summing, in its own order: exact for a
                // power-of-two world, within rounding otherwise.
                let expected = sum as f32 / gpus as f32;
                (out[i] - expected).abs() > 1e-5 * expected.abs().max(1.0)
            });
            check(
                &format!("multi_gpu_device_all_reduce_rank{rank}_of_{gpus}"),
                bad.is_none(),
                format!("first wrong index {bad:?}"),
                &mut failures,
            );
        }
        Ok(failures)
    }
}
