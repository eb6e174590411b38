//! Ring all-reduce tests: real loopback TCP between threads, one thread per rank.

use super::*;
use std::sync::Barrier as ThreadBarrier;

/// Binds one loopback listener per rank and returns them with the rendezvous each rank
/// would get.
fn loopback_gang(n: usize) -> Vec<(TcpListener, Rendezvous)> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let peers: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let rdv = Rendezvous {
                rank,
                world_size: n,
                peers: peers.clone(),
                nccl_id: None,
            };
            (l, rdv)
        })
        .collect()
}

/// Runs `body(ring)` on every rank of a fresh loopback ring, one thread each, and returns
/// the results by rank.
fn run_ring<T: Send + 'static>(
    n: usize,
    config: RingConfig,
    body: impl Fn(RingAllReduce) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let body = Arc::new(body);
    let handles: Vec<_> = loopback_gang(n)
        .into_iter()
        .map(|(listener, rdv)| {
            let (body, config) = (Arc::clone(&body), config.clone());
            std::thread::spawn(move || {
                let ring = RingAllReduce::connect(listener, &rdv, config).expect("ring connects");
                body(ring)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread panicked"))
        .collect()
}

/// Integer-valued contribution of `rank` at index `i`, in -50..=50: sums of a few of
/// these are exact in f32, so the expected mean is one correctly rounded division.
fn int_value(rank: usize, i: usize) -> f32 {
    ((i * 7 + rank * 13) % 101) as f32 - 50.0
}

/// The exact mean of `int_value` over `n` ranks, summed in integers (independent of the
/// ring's float arithmetic), then divided once in f32 as the ring does.
fn int_mean(n: usize, i: usize) -> f32 {
    let sum: i64 = (0..n).map(|r| ((i * 7 + r * 13) % 101) as i64 - 50).sum();
    sum as f32 / n as f32
}

fn small_chunks() -> RingConfig {
    RingConfig {
        chunk_floats: 3,
        ..RingConfig::default()
    }
}

#[test]
fn exact_mean_for_1_to_4_ranks_with_uneven_segments_and_chunks() {
    // Lengths: shorter than the world (empty segments), not divisible by n or by the
    // chunk, and a multiple of both.
    for n in 1..=4 {
        let results = run_ring(n, small_chunks(), move |mut ring| {
            let rank = ring.rank();
            let mut outs = Vec::new();
            for len in [0usize, 1, 2, 10, 17, 24] {
                let mut buf: Vec<f32> = (0..len).map(|i| int_value(rank, i)).collect();
                ring.all_reduce_mean_f32(&mut buf).expect("all-reduce");
                outs.push(buf);
            }
            outs
        });
        for (rank, outs) in results.iter().enumerate() {
            for out in outs {
                let expected: Vec<f32> = (0..out.len()).map(|i| int_mean(n, i)).collect();
                assert_eq!(out, &expected, "world {n}, rank {rank}, len {}", out.len());
            }
        }
    }
}

#[test]
fn every_rank_gets_the_same_bits_summed_in_ring_order() {
    // Random floats of mixed magnitude: float addition is not associative, so this checks
    // the documented order, segment j summed from rank j round the ring:
    // ((v_j + v_{j+1}) + ...) + v_{j-1}, then divided by n.
    let n = 4;
    let len = 1003;
    let value = |rank: usize, i: usize| {
        let mut x = (rank as u64 * 1_000_003 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        let unit = (x % 1_000_000) as f32 / 1_000_000.0 - 0.5;
        unit * 10f32.powi((x % 7) as i32 - 3)
    };
    let results = run_ring(n, small_chunks(), move |mut ring| {
        let rank = ring.rank();
        let mut buf: Vec<f32> = (0..len).map(|i| value(rank, i)).collect();
        ring.all_reduce_mean_f32(&mut buf).expect("all-reduce");
        buf
    });
    // Segment bounds written out independently: 1003 = 251 + 3 * 250.
    let starts = [0usize, 251, 501, 751, 1003];
    let mut expected = vec![0f32; len];
    for j in 0..n {
        for (i, e) in expected
            .iter_mut()
            .enumerate()
            .take(starts[j + 1])
            .skip(starts[j])
        {
            let mut acc = value(j, i);
            for k in 1..n {
                acc += value((j + k) % n, i);
            }
            *e = acc / n as f32;
        }
    }
    for (rank, out) in results.iter().enumerate() {
        let same_bits = out
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_bits, "rank {rank} differs from the ring-order sum");
    }
}

#[test]
fn large_buffer_streams_in_chunks() {
    // 3M floats with the default 1 MiB chunks: about 3 chunks per segment per step.
    let len = 3_000_000;
    let results = run_ring(3, RingConfig::default(), move |mut ring| {
        let rank = ring.rank();
        let mut buf: Vec<f32> = (0..len).map(|i| int_value(rank, i)).collect();
        ring.all_reduce_mean_f32(&mut buf).expect("all-reduce");
        buf
    });
    for (rank, out) in results.iter().enumerate() {
        let bad = (0..len).find(|&i| out[i] != int_mean(3, i));
        assert_eq!(bad, None, "rank {rank} first wrong index");
    }
}

#[test]
fn broadcast_copies_the_roots_buffer_and_barrier_waits_for_everyone() {
    let n = 4;
    let start = Instant::now();
    let results = run_ring(n, small_chunks(), move |mut ring| {
        let rank = ring.rank();
        let mut buf: Vec<f32> = (0..20).map(|i| (rank * 100 + i) as f32).collect();
        ring.broadcast_f32(&mut buf, 2).expect("broadcast");
        std::thread::sleep(Duration::from_millis(60 * rank as u64));
        let entered = start.elapsed();
        ring.barrier().expect("barrier");
        let left = start.elapsed();
        let bad_root = ring
            .broadcast_f32(&mut buf, n)
            .expect_err("root out of range");
        (buf, entered, left, bad_root.to_string())
    });
    let last_entry = results.iter().map(|r| r.1).max().expect("ranks");
    for (rank, (buf, _, left, bad_root)) in results.iter().enumerate() {
        let expected: Vec<f32> = (0..20).map(|i| (200 + i) as f32).collect();
        assert_eq!(buf, &expected, "rank {rank} did not get rank 2's buffer");
        assert!(
            *left >= last_entry,
            "rank {rank} left the barrier before the last rank entered"
        );
        assert!(bad_root.contains("broadcast root"), "{bad_root}");
    }
}

#[test]
fn length_disagreement_is_a_typed_error_and_poisons() {
    let results = run_ring(2, small_chunks(), |mut ring| {
        let len = if ring.rank() == 0 { 10 } else { 12 };
        let mut buf = vec![1.0f32; len];
        let first = ring
            .all_reduce_mean_f32(&mut buf)
            .expect_err("lengths differ");
        let second = ring.all_reduce_mean_f32(&mut buf).expect_err("poisoned");
        (first, second)
    });
    for (rank, (first, second)) in results.iter().enumerate() {
        match first {
            CollectiveError::LengthMismatch { peer, ours, theirs } => {
                assert_eq!(*peer, 1 - rank);
                assert_eq!(
                    (*ours, *theirs),
                    if rank == 0 { (10, 12) } else { (12, 10) }
                );
            }
            other => panic!("rank {rank}: unexpected {other}"),
        }
        assert!(
            matches!(second, CollectiveError::Poisoned { .. }),
            "{second}"
        );
    }
}

/// How the fake rank of the failure tests misbehaves after a correct handshake.
#[derive(Clone, Copy)]
enum Fault {
    /// Sends half a frame header and closes both sockets: a process that crashed.
    DieMidFrame,
    /// Keeps both sockets open and sends nothing: a hung or partitioned process.
    Hang,
}

/// A world of 4 where rank 2 performs the real handshake, then fails as `fault` says.
/// Returns each real rank's error and how long it took to appear.
fn gang_with_faulty_rank(
    fault: Fault,
    config_of_rank: impl Fn(usize) -> RingConfig,
) -> Vec<(usize, CollectiveError, Duration)> {
    let n = 4;
    let faulty = 2;
    let gang = loopback_gang(n);
    let ready = Arc::new(ThreadBarrier::new(n));
    let release_fake = Arc::new(ThreadBarrier::new(n));
    let mut handles = Vec::new();
    let mut fake = None;
    for (listener, rdv) in gang {
        let (ready, release_fake, config) = (
            Arc::clone(&ready),
            Arc::clone(&release_fake),
            config_of_rank(rdv.rank),
        );
        if rdv.rank == faulty {
            fake = Some(std::thread::spawn(move || {
                let session = rdv.session_tag();
                let hello = Hello {
                    rank: faulty as u32,
                    world_size: n as u32,
                    session,
                    chunk_floats: config.chunk_floats as u64,
                };
                let mut next = TcpStream::connect(rdv.peers[faulty + 1]).expect("connect next");
                next.write_all(&hello.encode()).expect("hello");
                let (mut prev, _) = listener.accept().expect("accept prev");
                let mut their_hello = [0u8; HELLO_BYTES];
                prev.read_exact(&mut their_hello).expect("prev hello");
                prev.write_all(&wire::encode_ack(session)).expect("ack");
                let mut ack = [0u8; ACK_BYTES];
                next.read_exact(&mut ack).expect("next ack");
                ready.wait();
                match fault {
                    Fault::DieMidFrame => {
                        let mut head = Vec::new();
                        Header {
                            kind: Kind::ReduceScatter,
                            op_seq: 0,
                            total_len: 1000,
                            offset: 0,
                            count: 3,
                            step: 0,
                        }
                        .encode(&mut head);
                        next.write_all(&head[..HEADER_BYTES / 2])
                            .expect("half a frame");
                        drop((next, prev));
                        release_fake.wait();
                    }
                    Fault::Hang => {
                        // Hold the sockets until the test is over.
                        release_fake.wait();
                        drop((next, prev));
                    }
                }
            }));
            continue;
        }
        handles.push(std::thread::spawn(move || {
            let rank = rdv.rank;
            let mut ring = RingAllReduce::connect(listener, &rdv, config).expect("connect");
            ready.wait();
            let start = Instant::now();
            let mut buf = vec![1.0f32; 1000];
            let err = ring
                .all_reduce_mean_f32(&mut buf)
                .expect_err("rank 2 fails");
            let took = start.elapsed();
            release_fake.wait();
            (rank, err, took)
        }));
    }
    let results = handles
        .into_iter()
        .map(|h| h.join().expect("rank thread panicked"))
        .collect();
    fake.expect("fake rank").join().expect("fake rank panicked");
    results
}

#[test]
fn peer_dying_mid_reduce_is_blamed_by_every_survivor_quickly() {
    // A long op timeout: detection must come from the closed socket, not the timer.
    let config = RingConfig {
        chunk_floats: 100,
        op_timeout: Duration::from_secs(60),
        ..RingConfig::default()
    };
    let results = gang_with_faulty_rank(Fault::DieMidFrame, |_| config.clone());
    assert_eq!(results.len(), 3);
    for (rank, err, took) in results {
        assert_eq!(
            err.failed_rank(),
            Some(2),
            "rank {rank} blamed the wrong rank: {err}"
        );
        assert!(took < Duration::from_secs(10), "rank {rank} took {took:?}");
        if rank == 3 {
            // The successor saw the connection close mid-frame.
            assert!(
                matches!(err, CollectiveError::PeerDisconnected { peer: 2, .. }),
                "rank 3: {err}"
            );
        }
    }
}

#[test]
fn hung_peer_times_out_and_the_timeout_travels_round_the_ring() {
    // Rank 3 waits 800 ms on the silent rank 2. Ranks 0 and 1 have a shorter timeout
    // (timeouts are local), yet must not blame their neighbours: those are inside the
    // collective, waiting too, and say so with keepalives. They learn of rank 2 from
    // rank 3's abort.
    let config_of_rank = |rank: usize| RingConfig {
        chunk_floats: 100,
        op_timeout: Duration::from_millis(if rank == 3 { 800 } else { 400 }),
        poll_interval: Duration::from_millis(50),
        ..RingConfig::default()
    };
    let results = gang_with_faulty_rank(Fault::Hang, config_of_rank);
    for (rank, err, took) in results {
        assert_eq!(
            err.failed_rank(),
            Some(2),
            "rank {rank} blamed the wrong rank: {err}"
        );
        // Each rank's clock starts when its own thread does, a few ms apart, so rank 3's
        // 800 ms can end slightly before 800 ms on another rank's clock: the bound is
        // well past ranks 0 and 1's own 400 ms timeout (the error kind below proves
        // they learnt of rank 2 from rank 3).
        assert!(
            took >= Duration::from_millis(700),
            "rank {rank} gave up before rank 3's timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(10), "rank {rank} took {took:?}");
        match (rank, &err) {
            (3, CollectiveError::PeerTimeout { peer: 2, .. }) => {}
            (
                0 | 1,
                CollectiveError::PeerFailed {
                    failed_rank: 2,
                    reported_by: 3,
                    ..
                },
            ) => {}
            _ => panic!("rank {rank}: unexpected {err}"),
        }
    }
}

#[test]
fn handshake_refuses_strangers_and_mismatched_chunk_sizes() {
    // A stranger connects to rank 0's listener before the real predecessor: ignored.
    let gang = loopback_gang(2);
    let stranger_target = gang[0].1.peers[0];
    let mut stranger = TcpStream::connect(stranger_target).expect("stranger connects");
    stranger
        .write_all(&[0u8; HELLO_BYTES])
        .expect("garbage hello");
    let handles: Vec<_> = gang
        .into_iter()
        .map(|(listener, rdv)| {
            std::thread::spawn(move || {
                let mut ring = RingAllReduce::connect(listener, &rdv, small_chunks())?;
                let mut buf = vec![rdv.rank as f32 * 2.0; 5];
                ring.all_reduce_mean_f32(&mut buf)?;
                Ok::<_, CollectiveError>(buf)
            })
        })
        .collect();
    for h in handles {
        let buf = h
            .join()
            .expect("thread")
            .expect("ring works despite the stranger");
        assert_eq!(buf, vec![1.0; 5]);
    }

    // Rank 1 uses another chunk size: rank 0 refuses it, naming rank 1.
    let handles: Vec<_> = loopback_gang(2)
        .into_iter()
        .map(|(listener, rdv)| {
            std::thread::spawn(move || {
                let config = RingConfig {
                    chunk_floats: 4 + rdv.rank,
                    connect_timeout: Duration::from_secs(3),
                    ..RingConfig::default()
                };
                RingAllReduce::connect(listener, &rdv, config).map(|_| ())
            })
        })
        .collect();
    let errors: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let rank0 = errors[0].as_ref().expect_err("rank 0 refuses");
    assert!(rank0.to_string().contains("chunks of 5 floats"), "{rank0}");
    assert_eq!(rank0.failed_rank(), Some(1));
    assert!(errors[1].is_err(), "rank 1 gets no answer");
}

#[test]
fn skewed_ranks_with_busy_keepalives_agree_over_many_rounds() {
    // Keepalives every millisecond and ranks entering each collective at different
    // times, then leaving at once: every round must succeed on every rank, with the
    // same bits.
    let config = RingConfig {
        chunk_floats: 7,
        poll_interval: Duration::from_millis(1),
        ..RingConfig::default()
    };
    for _ in 0..10 {
        let results = run_ring(3, config.clone(), |mut ring| {
            let rank = ring.rank();
            let mut buf: Vec<f32> = (0..50).map(|i| int_value(rank, i)).collect();
            for round in 0..5 {
                std::thread::sleep(Duration::from_millis(((rank + round) % 3) as u64 * 3));
                ring.all_reduce_mean_f32(&mut buf)?;
            }
            Ok::<_, CollectiveError>(buf)
        });
        let first = results[0]
            .as_ref()
            .map(|b| b.clone())
            .map_err(|e| e.to_string());
        for (rank, result) in results.iter().enumerate() {
            let buf = result
                .as_ref()
                .map_err(|e| format!("rank {rank}: {e}"))
                .expect("no rank fails");
            assert_eq!(Ok(buf), first.as_ref(), "rank {rank} differs");
        }
    }
}

/// Reads one frame, skipping keepalives, for the hand-played ranks below.
fn read_frame(stream: &mut TcpStream) -> (Header, Vec<f32>) {
    loop {
        let mut head = [0u8; HEADER_BYTES];
        stream.read_exact(&mut head).expect("frame header");
        let header = Header::decode(&head).expect("valid header");
        if header.kind == Kind::Keepalive {
            continue;
        }
        let mut payload = vec![0u8; 4 * header.count as usize];
        stream.read_exact(&mut payload).expect("payload");
        let mut values = vec![0f32; header.count as usize];
        wire::copy_f32s(&payload, &mut values);
        return (header, values);
    }
}

fn write_frame(stream: &mut TcpStream, header: Header, values: &[f32]) {
    let mut frame = Vec::new();
    header.encode(&mut frame);
    wire::encode_f32s(values, &mut frame);
    stream.write_all(&frame).expect("write frame");
}

#[test]
fn a_successor_that_finished_and_closed_does_not_fail_the_waiting_rank() {
    // World of 2; rank 1 is played by hand. It gets everything it needs, closes the
    // connection it reads from (as a rank does that returns and drops its communicator),
    // and only 200 ms later delivers its last frame, still in flight. Meanwhile rank 0
    // waits and sends keepalives into the closed connection: that must not fail it.
    let config = RingConfig {
        chunk_floats: 8,
        poll_interval: Duration::from_millis(5),
        ..RingConfig::default()
    };
    let mut gang = loopback_gang(2);
    let (listener1, rdv1) = gang.pop().expect("rank 1");
    let (listener0, rdv0) = gang.pop().expect("rank 0");
    let chunk_floats = config.chunk_floats as u64;
    let fake = std::thread::spawn(move || {
        let session = rdv1.session_tag();
        let hello = Hello {
            rank: 1,
            world_size: 2,
            session,
            chunk_floats,
        };
        let mut next = TcpStream::connect(rdv1.peers[0]).expect("connect rank 0");
        next.write_all(&hello.encode()).expect("hello");
        let (mut prev, _) = listener1.accept().expect("accept rank 0");
        let mut their_hello = [0u8; HELLO_BYTES];
        prev.read_exact(&mut their_hello).expect("rank 0 hello");
        prev.write_all(&wire::encode_ack(session)).expect("ack");
        let mut ack = [0u8; ACK_BYTES];
        next.read_exact(&mut ack).expect("ack from rank 0");
        // Rank 1 contributes [7, 11]. Segment 0 is index 0, segment 1 index 1.
        let frame = |kind, offset, step| Header {
            kind,
            op_seq: 0,
            total_len: 2,
            offset,
            count: 1,
            step,
        };
        let (h, a0) = read_frame(&mut prev);
        assert_eq!(h, frame(Kind::ReduceScatter, 0, 0));
        write_frame(&mut next, frame(Kind::ReduceScatter, 1, 0), &[11.0]);
        let (h, seg1) = read_frame(&mut prev);
        assert_eq!(
            (h, seg1.as_slice()),
            (frame(Kind::AllGather, 1, 1), &[16.0f32][..])
        );
        drop(prev);
        std::thread::sleep(Duration::from_millis(200));
        write_frame(&mut next, frame(Kind::AllGather, 0, 1), &[a0[0] + 7.0]);
        drop(next);
    });
    let mut ring = RingAllReduce::connect(listener0, &rdv0, config).expect("connect");
    let mut buf = [3.0f32, 5.0];
    let result = ring.all_reduce_mean_f32(&mut buf);
    fake.join().expect("hand-played rank 1 panicked");
    result.expect("rank 0 completes");
    assert_eq!(buf, [5.0, 8.0]);
}

#[test]
fn segments_cover_the_buffer_and_empty_ranges_still_get_a_frame() {
    assert_eq!(segment(10, 4, 0), 0..3);
    assert_eq!(segment(10, 4, 1), 3..6);
    assert_eq!(segment(10, 4, 2), 6..8);
    assert_eq!(segment(10, 4, 3), 8..10);
    assert_eq!(segment(2, 4, 3), 2..2);
    assert_eq!(
        chunks(5..12, 3).collect::<Vec<_>>(),
        vec![(5, 3), (8, 3), (11, 1)]
    );
    assert_eq!(chunks(4..4, 3).collect::<Vec<_>>(), vec![(4, 0)]);
}
