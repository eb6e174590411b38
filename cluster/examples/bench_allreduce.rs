//! Bus bandwidth of the CPU ring all-reduce on loopback, next to the raw loopback TCP
//! throughput measured in the same run.
//!
//! For 2 and 4 ranks (threads of this process, real TCP over 127.0.0.1) and gradient
//! buffers the size of ResNet20 (0.27M floats) and ResNet18 (11.2M floats), it times
//! `all_reduce_mean_f32` and prints, as nccl-tests does, the algorithm bandwidth
//! (bytes / time) and the bus bandwidth (algbw * 2(n-1)/n, what each rank's link
//! carries), and the ratio of bus bandwidth to a single raw TCP stream. All ranks' links
//! carry traffic at once, so the sum over links is shown too: on a machine with fewer
//! cores than 2 x ranks threads, that sum against the raw stream measures the ring's
//! CPU overhead (an extra encode copy and the reduction per byte).
//!
//! Run: `cargo run --release -p overinterp-cluster --example bench_allreduce`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overinterp_cluster::collective::{
    AllReduce, CollectiveError, Rendezvous, RingAllReduce, RingConfig,
};

/// Bytes pushed through one loopback connection to measure raw throughput.
const RAW_BYTES: usize = 1 << 30;
/// Write/read size for the raw measurement: the ring's default frame payload.
const RAW_CHUNK: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let raw = raw_tcp_throughput()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "raw loopback TCP, one stream, {} MiB in {} KiB writes: {:.2} GB/s ({cores} cores)",
        RAW_BYTES >> 20,
        RAW_CHUNK >> 10,
        raw / 1e9
    );
    println!();
    println!(
        "| ranks | buffer | floats | time/op | algbw GB/s | busbw GB/s | busbw / raw TCP | all links GB/s | all links / raw TCP |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for ranks in [2usize, 4] {
        for (name, floats, iters) in [
            ("ResNet20", 270_000usize, 50usize),
            ("ResNet18", 11_200_000, 5),
        ] {
            let per_op = time_all_reduce(ranks, floats, iters)?;
            let bytes = (4 * floats) as f64;
            let algbw = bytes / per_op.as_secs_f64();
            let busbw = algbw * 2.0 * (ranks - 1) as f64 / ranks as f64;
            // Every rank's outgoing link carries busbw at once; on a machine with few
            // cores the ranks share the CPUs the raw stream had to itself, so the sum
            // over links is the comparison that shows the ring's own overhead.
            let all_links = busbw * ranks as f64;
            println!(
                "| {ranks} | {name} | {floats} | {:.2} ms | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                per_op.as_secs_f64() * 1e3,
                algbw / 1e9,
                busbw / 1e9,
                busbw / raw,
                all_links / 1e9,
                all_links / raw
            );
        }
    }
    Ok(())
}

/// Bytes per second through one loopback TCP connection, writer and reader in two
/// threads: the ceiling a single ring link can reach on this machine.
fn raw_tcp_throughput() -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let chunk = vec![0x5au8; RAW_CHUNK];
        for _ in 0..RAW_BYTES / RAW_CHUNK {
            stream.write_all(&chunk)?;
        }
        Ok(())
    });
    let (mut stream, _) = listener.accept()?;
    let mut buf = vec![0u8; RAW_CHUNK];
    let start = Instant::now();
    let mut got = 0usize;
    while got < RAW_BYTES {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "writer stopped early",
            ));
        }
        got += n;
    }
    let secs = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| std::io::Error::other("raw writer panicked"))??;
    Ok(got as f64 / secs)
}

/// Mean wall time of one all-reduce of `floats` floats over `ranks` loopback ranks, as
/// seen by rank 0 between two barriers, after one warm-up call.
fn time_all_reduce(ranks: usize, floats: usize, iters: usize) -> Result<Duration, CollectiveError> {
    let listeners: Vec<TcpListener> = (0..ranks)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| CollectiveError::Protocol {
            peer: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            detail: format!("binding loopback listeners: {e}"),
        })?;
    let peers: Arc<Vec<SocketAddr>> = Arc::new(
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect(),
    );
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let peers = Arc::clone(&peers);
            std::thread::spawn(move || -> Result<Duration, CollectiveError> {
                let rendezvous = Rendezvous {
                    rank,
                    world_size: ranks,
                    peers: peers.to_vec(),
                    nccl_id: None,
                };
                let mut ring =
                    RingAllReduce::connect(listener, &rendezvous, RingConfig::default())?;
                let mut grads: Vec<f32> = (0..floats)
                    .map(|i| (i % 97) as f32 * 0.01 + rank as f32)
                    .collect();
                ring.all_reduce_mean_f32(&mut grads)?;
                ring.barrier()?;
                let start = Instant::now();
                for _ in 0..iters {
                    ring.all_reduce_mean_f32(&mut grads)?;
                }
                ring.barrier()?;
                Ok(start.elapsed() / iters as u32)
            })
        })
        .collect();
    let mut times = Vec::new();
    for handle in handles {
        let time = handle.join().map_err(|_| CollectiveError::Poisoned {
            first: "a bench rank panicked".into(),
        })??;
        times.push(time);
    }
    Ok(times[0])
}
