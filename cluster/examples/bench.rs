//! Cluster benchmarks, printed as a table (run by `scripts/bench-cluster`):
//!
//! 1. raw loopback QUIC: one stream blasting bytes, same TLS and transport settings;
//! 2. leader ingest: 4 local workers sending ImageNet-sized results (one 299×299 u32
//!    removal-step map, 357,604 bytes) from a synthetic executor, into a sink that
//!    discards and into the durable `FileSink`;
//! 3. sans-io scheduling: the coordinator alone driving 1,000 simulated workers.
//!
//! Usage: `bench [--images N] [--raw-mb M] [--workers W]`.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use overinterp_cluster::coord::{Coord, CoordConfig, Input, Output};
use overinterp_cluster::net::tls::{transport, ClientCredentials, SERVER_NAME};
use overinterp_cluster::net::{
    run_worker, Credentials, Leader, LeaderConfig, ShutdownHandle, WorkerConfig,
};
use overinterp_cluster::proto::{ToLeader, ToWorker};
use overinterp_cluster::sink::FileSink;
use overinterp_cluster::{EmitError, ExecError, Executor, ResultSink, SinkError};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One 299×299 map of u32 removal steps.
const RESULT_BYTES: usize = 299 * 299 * 4;

struct Args {
    images: u64,
    raw_mb: u64,
    workers: usize,
}

fn parse_args() -> BoxResult<Args> {
    let mut a = Args {
        images: 2000,
        raw_mb: 1024,
        workers: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--images" => a.images = value.parse()?,
            "--raw-mb" => a.raw_mb = value.parse()?,
            "--workers" => a.workers = value.parse()?,
            _ => {
                return Err(
                    format!("unknown flag {flag}; use --images, --raw-mb, --workers").into(),
                )
            }
        }
    }
    Ok(a)
}

/// Emits a fixed 357 KB map per image with the index stamped in its first bytes.
struct MapExecutor {
    template: Vec<u8>,
}

impl Executor for MapExecutor {
    fn run(
        &mut self,
        _job_spec: &str,
        shard_indices: &[u64],
        emit: &mut dyn FnMut(u64, Vec<u8>) -> Result<(), EmitError>,
        stop: &AtomicBool,
    ) -> Result<(), ExecError> {
        for chunk in shard_indices.chunks(32) {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            for &i in chunk {
                let mut map = self.template.clone();
                map[..8].copy_from_slice(&i.to_le_bytes());
                emit(i, map).map_err(|e| ExecError::wrap("emit", e))?;
            }
        }
        Ok(())
    }
}

/// Discards results: measures the network and coordinator path alone.
struct NullSink;

impl ResultSink for NullSink {
    fn durable_indices(&self) -> Vec<u64> {
        Vec::new()
    }
    fn append(&mut self, _index: u64, _payload: &[u8]) -> Result<bool, SinkError> {
        Ok(true)
    }
    fn sync(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Raw QUIC: one connection, one stream, `mb` MiB in 1 MiB writes. Returns MB/s.
async fn raw_quic(mb: u64) -> BoxResult<f64> {
    let dir = tempfile::tempdir()?;
    let creds = Credentials::load_or_create(dir.path())?;
    let server = quinn::Endpoint::server(
        creds.server_config(transport(Duration::from_secs(20))?)?,
        "127.0.0.1:0".parse()?,
    )?;
    let addr = server.local_addr()?;
    let recv_task = tokio::spawn(async move {
        let conn = server.accept().await.ok_or("no connection")?.await?;
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let start = Instant::now();
        while let Some(n) = recv.read(&mut buf).await? {
            total += n as u64;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((total, start.elapsed()))
    });
    let client_creds = ClientCredentials::load(dir.path())?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(
        client_creds.client_config(transport(Duration::from_secs(20))?)?,
    );
    let conn = client.connect(addr, SERVER_NAME)?.await?;
    let (mut send, _recv) = conn.open_bi().await?;
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mb {
        send.write_all(&chunk).await?;
    }
    send.finish()?;
    let (total, elapsed) = recv_task.await?.map_err(|e| e.to_string())?;
    conn.close(0u32.into(), b"done");
    assert_eq!(total, mb << 20);
    Ok(total as f64 / 1e6 / elapsed.as_secs_f64())
}

/// Leader ingest with `workers` local workers. Returns (MB/s, results/s, seconds).
async fn ingest<S: ResultSink>(
    images: u64,
    workers: usize,
    sink: S,
    job_dir: &std::path::Path,
) -> BoxResult<(f64, f64, f64)> {
    let mut config = LeaderConfig::new("127.0.0.1:0".parse()?, job_dir, "bench = true\n", images);
    config.shard_size = 32;
    config.linger = Duration::from_secs(2);
    let leader = Leader::bind(config, sink)?;
    let addr = leader.local_addr();
    let template: Vec<u8> = (0..RESULT_BYTES).map(|i| (i % 251) as u8).collect();
    let mut tasks = Vec::new();
    for i in 0..workers {
        let mut wc = WorkerConfig::new(job_dir, format!("bench-{i}"));
        wc.leader_addr = Some(addr);
        let exec = MapExecutor {
            template: template.clone(),
        };
        tasks.push(tokio::spawn(run_worker(
            wc,
            exec,
            ShutdownHandle::new().subscribe(),
        )));
    }
    let report = leader.run().await?;
    for t in tasks {
        t.await??;
    }
    // Time to the last durable result, not including the linger at the end.
    let secs = report.status.elapsed_s;
    Ok((
        report.ingested_bytes as f64 / 1e6 / secs,
        report.stats.accepted as f64 / secs,
        secs,
    ))
}

/// The coordinator alone: 1,000 workers pulling 4-image shards until `shards` are
/// done. Returns (inputs handled/s, assignments/s, shards).
fn scheduling(workers: u64, shards: u64) -> (f64, f64, u64) {
    let shard_size = 4;
    let t0 = Instant::now();
    let config = CoordConfig {
        speculate_after: Some(Duration::from_secs(60)),
        ..CoordConfig::new(shards * shard_size, shard_size)
    };
    let mut coord = Coord::new(t0, config, std::iter::empty());
    let mut inputs = 0u64;
    let mut now = t0;
    let start = Instant::now();
    let mut queue: std::collections::VecDeque<Input> = std::collections::VecDeque::new();
    for w in 0..workers {
        queue.push_back(Input::Joined {
            worker: w,
            name: format!("sim-{w}"),
            capacity: 32,
        });
        queue.push_back(Input::Message {
            worker: w,
            msg: ToLeader::RequestShard,
        });
    }
    let mut assigned = 0u64;
    let mut to_sync = Vec::new();
    while !coord.is_complete() {
        while let Some(input) = queue.pop_front() {
            now += Duration::from_micros(10);
            coord.handle(now, input);
            inputs += 1;
            while let Some(out) = coord.poll_output() {
                match out {
                    Output::Send {
                        worker,
                        msg:
                            ToWorker::Assign {
                                shard_id, indices, ..
                            },
                    } => {
                        assigned += 1;
                        for index in indices {
                            queue.push_back(Input::Message {
                                worker,
                                msg: ToLeader::Result {
                                    shard_id,
                                    index,
                                    identity: [0; 32],
                                    payload: Vec::new(),
                                },
                            });
                        }
                        queue.push_back(Input::Message {
                            worker,
                            msg: ToLeader::ShardDone { shard_id },
                        });
                        queue.push_back(Input::Message {
                            worker,
                            msg: ToLeader::RequestShard,
                        });
                    }
                    Output::Sync { shard_id } => to_sync.push(shard_id),
                    _ => {}
                }
            }
            if to_sync.len() >= 64 {
                queue.push_back(Input::Durable {
                    shards: std::mem::take(&mut to_sync),
                });
            }
        }
        if !to_sync.is_empty() {
            queue.push_back(Input::Durable {
                shards: std::mem::take(&mut to_sync),
            });
        }
        if queue.is_empty() && !coord.is_complete() {
            break;
        }
    }
    assert!(coord.is_complete(), "simulation stalled");
    let secs = start.elapsed().as_secs_f64();
    (inputs as f64 / secs, assigned as f64 / secs, shards)
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let raw = raw_quic(args.raw_mb).await?;
    let dir = tempfile::tempdir()?;
    let (null_mb, null_rps, null_s) = ingest(
        args.images,
        args.workers,
        NullSink,
        &dir.path().join("null"),
    )
    .await?;
    let store_dir = dir.path().join("file");
    std::fs::create_dir_all(&store_dir)?;
    let sink = FileSink::open(store_dir.join("results.bin"))?;
    let (file_mb, file_rps, file_s) = ingest(args.images, args.workers, sink, &store_dir).await?;
    let (inputs_s, assign_s, shards) = scheduling(1000, 50_000);

    let w = args.workers;
    let n = args.images;
    println!("| measurement | MB/s | results/s | ratio to raw QUIC |");
    println!("|---|---:|---:|---:|");
    println!(
        "| raw loopback QUIC, 1 stream, {} MiB | {raw:.0} | — | 1.00 |",
        args.raw_mb
    );
    println!("| leader ingest, {w} workers, {n} × {RESULT_BYTES} B, null sink ({null_s:.1} s) | {null_mb:.0} | {null_rps:.0} | {:.2} |", null_mb / raw);
    println!("| leader ingest, {w} workers, {n} × {RESULT_BYTES} B, FileSink + fsync ({file_s:.1} s) | {file_mb:.0} | {file_rps:.0} | {:.2} |", file_mb / raw);
    println!();
    println!("| sans-io scheduling, 1,000 simulated workers, {shards} shards of 4 | per second |");
    println!("|---|---:|");
    println!(
        "| coordinator inputs handled (join, request, result, done, durable) | {inputs_s:.0} |"
    );
    println!("| shard assignments (scheduling decisions) | {assign_s:.0} |");
    Ok(())
}
