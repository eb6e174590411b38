//! How the ranks of a gang find each other: [`Rendezvous`] is the result every backend
//! starts from (listen addresses by rank, and the NCCL unique id), and
//! [`FileRendezvous`] produces it through a directory all ranks share.
//!
//! The file protocol: rank `r` writes `rank-<r>.addr` atomically (temporary file, fsync,
//! rename), then polls the directory until all `world_size` files exist or the timeout
//! passes. A file that already exists when a rank starts is refused: it was left by an
//! earlier attempt of the gang, whose addresses are dead. Use a fresh directory per gang
//! attempt (e.g. `<job>/rendezvous/attempt-<k>`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CollectiveError;

/// The first line of every rendezvous file: a format name and version, so a file from
/// an incompatible build is refused with a clear message rather than misread.
const FILE_HEADER: &str = "overinterp-rendezvous 1";

/// Bytes in an NCCL unique id (`ncclUniqueId::internal`).
pub const NCCL_ID_BYTES: usize = 128;

/// Where each rank of a gang listens, and the NCCL id rank 0 created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Ranks in the gang.
    pub world_size: usize,
    /// Listen address of every rank, indexed by rank (this rank's own included), for the
    /// CPU ring backend.
    pub peers: Vec<SocketAddr>,
    /// The NCCL unique id from rank 0, when the gang uses the NCCL backend. NCCL
    /// bootstraps its own connections from it; the same id must reach every rank.
    pub nccl_id: Option<[u8; NCCL_ID_BYTES]>,
}

impl Rendezvous {
    /// Checks that `rank < world_size` and that there is one address per rank; every
    /// backend calls this first so a malformed rendezvous fails before any connection.
    pub fn validate(&self) -> Result<(), CollectiveError> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(CollectiveError::InvalidRank {
                rank: self.rank,
                world_size: self.world_size,
                context: " in the rendezvous",
            });
        }
        if self.peers.len() != self.world_size {
            return Err(CollectiveError::InvalidRank {
                rank: self.peers.len(),
                world_size: self.world_size,
                context: " (number of peer addresses in the rendezvous, must equal the world size)",
            });
        }
        Ok(())
    }

    /// A tag every rank of this gang computes identically from the rendezvous (FNV-1a of
    /// world size, addresses and NCCL id). Ring connections carry it in their handshake,
    /// so a process left over from an earlier gang that reuses an address is refused.
    pub fn session_tag(&self) -> u64 {
        let mut text = format!("{}|", self.world_size);
        for peer in &self.peers {
            let _ = write!(text, "{peer}|");
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let id_bytes = self.nccl_id.as_ref().map(|id| &id[..]).unwrap_or(&[]);
        for byte in text.as_bytes().iter().chain(id_bytes) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }
}

/// A rendezvous through a shared directory: each rank publishes its listen address as
/// `rank-<r>.addr` and waits, bounded, for all the others.
#[derive(Debug, Clone)]
pub struct FileRendezvous {
    /// The shared directory, fresh for this gang attempt.
    dir: PathBuf,
    /// This rank.
    rank: usize,
    /// Ranks in the gang.
    world_size: usize,
    /// How long to wait for the other ranks' files: Slurm may start the tasks of one
    /// step minutes apart on a busy cluster, but a rank that never comes must not hang
    /// the others forever.
    timeout: Duration,
    /// How often to look for new files; shared file systems make each look costly.
    poll_interval: Duration,
}

impl FileRendezvous {
    /// A rendezvous for `rank` of `world_size` in `dir`, waiting at most 5 minutes.
    pub fn new(
        dir: impl Into<PathBuf>,
        rank: usize,
        world_size: usize,
    ) -> Result<Self, CollectiveError> {
        if world_size == 0 || rank >= world_size {
            return Err(CollectiveError::InvalidRank {
                rank,
                world_size,
                context: " for the file rendezvous",
            });
        }
        Ok(Self {
            dir: dir.into(),
            rank,
            world_size,
            timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(50),
        })
    }

    /// Sets how long [`FileRendezvous::exchange`] waits for the other ranks.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The file rank `rank` publishes in `dir`.
    pub fn file_path(dir: &Path, rank: usize) -> PathBuf {
        dir.join(format!("rank-{rank}.addr"))
    }

    /// Publishes `listen_addr` (and, on rank 0, the NCCL unique id) and returns once every
    /// rank has published; `nccl_id` is ignored on other ranks.
    pub fn exchange(
        &self,
        listen_addr: SocketAddr,
        nccl_id: Option<[u8; NCCL_ID_BYTES]>,
    ) -> Result<Rendezvous, CollectiveError> {
        let own = Self::file_path(&self.dir, self.rank);
        if listen_addr.ip().is_unspecified() || listen_addr.port() == 0 {
            return Err(CollectiveError::RendezvousBadFile {
                path: own,
                problem: format!(
                    "refusing to publish {listen_addr}: peers cannot connect to it; publish the \
                     address of this host's interface and the listener's actual port"
                ),
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| CollectiveError::RendezvousIo {
            path: self.dir.clone(),
            what: "creating the rendezvous directory",
            source,
        })?;
        if own.exists() {
            return Err(CollectiveError::RendezvousBadFile {
                path: own,
                problem: "already exists, left by an earlier attempt of this gang; use a fresh \
                          rendezvous directory per attempt"
                    .into(),
            });
        }
        let nccl_id = if self.rank == 0 { nccl_id } else { None };
        let contents = render(self.rank, self.world_size, listen_addr, nccl_id.as_ref());
        write_atomically(&own, contents.as_bytes())?;
        tracing::debug!(rank = self.rank, world_size = self.world_size, %listen_addr,
            dir = %self.dir.display(), "published rendezvous address");

        let start = Instant::now();
        let mut peers: Vec<Option<SocketAddr>> = vec![None; self.world_size];
        let mut root_id = None;
        loop {
            for (rank, slot) in peers.iter_mut().enumerate() {
                if slot.is_some() {
                    continue;
                }
                let path = Self::file_path(&self.dir, rank);
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(CollectiveError::RendezvousIo {
                            path,
                            what: "reading",
                            source,
                        })
                    }
                };
                let entry = parse(&path, &text)?;
                if entry.rank != rank || entry.world_size != self.world_size {
                    return Err(CollectiveError::RendezvousBadFile {
                        path,
                        problem: format!(
                            "says rank {} of {} where this rank expects rank {rank} of {}; \
                             do all ranks agree on the world size?",
                            entry.rank, entry.world_size, self.world_size
                        ),
                    });
                }
                if rank == 0 {
                    root_id = entry.nccl_id;
                }
                *slot = Some(entry.addr);
            }
            let missing: Vec<usize> = (0..self.world_size)
                .filter(|r| peers[*r].is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                return Err(CollectiveError::RendezvousTimeout {
                    dir: self.dir.clone(),
                    missing,
                    waited,
                });
            }
            std::thread::sleep(self.poll_interval.min(self.timeout - waited));
        }
        Ok(Rendezvous {
            rank: self.rank,
            world_size: self.world_size,
            peers: peers.into_iter().flatten().collect(),
            nccl_id: root_id,
        })
    }
}

/// One parsed rendezvous file.
struct Entry {
    /// The rank the file says it belongs to.
    rank: usize,
    /// The world size that rank was started with.
    world_size: usize,
    /// Its listen address.
    addr: SocketAddr,
    /// Rank 0's NCCL unique id, if it published one.
    nccl_id: Option<[u8; NCCL_ID_BYTES]>,
}

fn render(
    rank: usize,
    world_size: usize,
    addr: SocketAddr,
    nccl_id: Option<&[u8; NCCL_ID_BYTES]>,
) -> String {
    let mut text = format!("{FILE_HEADER}\nrank {rank}\nworld_size {world_size}\naddr {addr}\n");
    if let Some(id) = nccl_id {
        text.push_str("nccl_id ");
        for byte in id {
            let _ = write!(text, "{byte:02x}");
        }
        text.push('\n');
    }
    text
}

fn parse(path: &Path, text: &str) -> Result<Entry, CollectiveError> {
    let bad = |problem: String| CollectiveError::RendezvousBadFile {
        path: path.to_path_buf(),
        problem,
    };
    let mut lines = text.lines();
    if lines.next() != Some(FILE_HEADER) {
        return Err(bad(format!(
            "does not start with `{FILE_HEADER}`; written by another program or version"
        )));
    }
    let (mut rank, mut world_size, mut addr, mut nccl_id) = (None, None, None, None);
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once(' ')
            .ok_or_else(|| bad(format!("line `{line}` is not `key value`")))?;
        match key {
            "rank" => {
                rank = Some(
                    value
                        .parse::<usize>()
                        .map_err(|e| bad(format!("rank `{value}`: {e}")))?,
                )
            }
            "world_size" => {
                world_size = Some(
                    value
                        .parse::<usize>()
                        .map_err(|e| bad(format!("world_size `{value}`: {e}")))?,
                )
            }
            "addr" => {
                addr = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| bad(format!("addr `{value}`: {e}")))?,
                )
            }
            "nccl_id" => nccl_id = Some(parse_hex_id(value).map_err(bad)?),
            other => return Err(bad(format!("unknown key `{other}`"))),
        }
    }
    Ok(Entry {
        rank: rank.ok_or_else(|| bad("no `rank` line".into()))?,
        world_size: world_size.ok_or_else(|| bad("no `world_size` line".into()))?,
        addr: addr.ok_or_else(|| bad("no `addr` line".into()))?,
        nccl_id,
    })
}

fn parse_hex_id(value: &str) -> Result<[u8; NCCL_ID_BYTES], String> {
    let bytes = value.as_bytes();
    if bytes.len() != 2 * NCCL_ID_BYTES {
        return Err(format!(
            "nccl_id has {} hex digits, expected {}",
            bytes.len(),
            2 * NCCL_ID_BYTES
        ));
    }
    let mut id = [0u8; NCCL_ID_BYTES];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digits = std::str::from_utf8(pair).map_err(|_| "nccl_id is not ASCII".to_string())?;
        id[i] = u8::from_str_radix(digits, 16)
            .map_err(|_| format!("nccl_id has a non-hex pair `{digits}` at byte {i}"))?;
    }
    Ok(id)
}

/// Writes `path` so readers see either nothing or the whole file: a partial address
/// would send a peer to the wrong place.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), CollectiveError> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("rank.addr");
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| CollectiveError::RendezvousIo {
            path: p,
            what,
            source,
        }
    };
    let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(contents).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn four_ranks_in_threads_agree_and_get_rank0_nccl_id() -> Result<(), CollectiveError> {
        let dir = tempfile::tempdir().map_err(|source| CollectiveError::RendezvousIo {
            path: "tempdir".into(),
            what: "creating",
            source,
        })?;
        let mut id = [0u8; NCCL_ID_BYTES];
        for (i, b) in id.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let handles: Vec<_> = (0..4)
            .map(|rank| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    // Stagger starts so some ranks wait on others.
                    std::thread::sleep(Duration::from_millis(30 * (3 - rank as u64)));
                    let own_id = if rank == 0 {
                        Some(id)
                    } else {
                        Some([9u8; 128])
                    };
                    FileRendezvous::new(dir, rank, 4)?
                        .with_timeout(Duration::from_secs(10))
                        .exchange(addr(40_000 + rank as u16), own_id)
                })
            })
            .collect();
        let results: Vec<Rendezvous> = handles
            .into_iter()
            .map(|h| h.join().expect("rendezvous thread panicked"))
            .collect::<Result<_, _>>()?;
        let expected_peers: Vec<SocketAddr> = (0..4).map(|r| addr(40_000 + r)).collect();
        for (rank, rdv) in results.iter().enumerate() {
            assert_eq!(rdv.rank, rank);
            assert_eq!(rdv.world_size, 4);
            assert_eq!(rdv.peers, expected_peers);
            assert_eq!(rdv.nccl_id, Some(id), "only rank 0's id is published");
            assert_eq!(rdv.session_tag(), results[0].session_tag());
        }
        Ok(())
    }

    #[test]
    fn missing_rank_times_out_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = Instant::now();
        let err = FileRendezvous::new(dir.path(), 0, 3)
            .expect("valid rank")
            .with_timeout(Duration::from_millis(200))
            .exchange(addr(1234), None)
            .expect_err("ranks 1 and 2 never come");
        assert!(start.elapsed() < Duration::from_secs(5));
        match err {
            CollectiveError::RendezvousTimeout { missing, .. } => assert_eq!(missing, vec![1, 2]),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn stale_own_file_and_world_size_disagreement_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            FileRendezvous::file_path(dir.path(), 1),
            render(1, 3, addr(5), None),
        )
        .expect("write");
        let err = FileRendezvous::new(dir.path(), 1, 2)
            .expect("valid")
            .exchange(addr(6), None)
            .expect_err("own file exists");
        assert!(err.to_string().contains("earlier attempt"), "{err}");

        // Rank 0 of a world of 2 finds rank 1's file claiming a world of 3.
        let err = FileRendezvous::new(dir.path(), 0, 2)
            .expect("valid")
            .with_timeout(Duration::from_secs(2))
            .exchange(addr(7), None)
            .expect_err("world sizes disagree");
        let text = err.to_string();
        assert!(
            text.contains("rank-1.addr") && text.contains("of 3"),
            "{text}"
        );
    }

    #[test]
    fn unroutable_addresses_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = FileRendezvous::new(dir.path(), 0, 1)
            .expect("valid")
            .exchange(SocketAddr::from(([0, 0, 0, 0], 4000)), None)
            .expect_err("0.0.0.0");
        assert!(err.to_string().contains("0.0.0.0:4000"), "{err}");
        assert!(FileRendezvous::new(dir.path(), 2, 2).is_err());

        let p = Path::new("rank-0.addr");
        assert!(parse(p, "something else\n").is_err());
        assert!(parse(p, &format!("{FILE_HEADER}\nrank 0\nworld_size 1\n")).is_err());
        assert!(parse(
            p,
            &format!("{FILE_HEADER}\nrank x\nworld_size 1\naddr 1.2.3.4:5\n")
        )
        .is_err());
        let short_id = format!("{FILE_HEADER}\nrank 0\nworld_size 1\naddr 1.2.3.4:5\nnccl_id ab\n");
        assert!(parse(p, &short_id).is_err());
        let ok = parse(p, &render(0, 1, addr(5), Some(&[0xab; 128]))).expect("round trip");
        assert_eq!(ok.nccl_id, Some([0xab; 128]));
        assert_eq!(ok.addr, addr(5));
    }
}
