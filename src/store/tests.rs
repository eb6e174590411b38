//! Store tests: round trip and lookup, exactly-once, crash states and recovery, a real
//! SIGKILL of a writing process followed by a resume, corruption detection, and the
//! Python reader of `README.md` run against a store written here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;
use crate::sis::{ImageSis, Method, Objective, SisCollection};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// splitmix64: a tiny deterministic generator, so records are a pure function of
/// their index (as real SIS results are of `(job, index)`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A 4×5 image store, Batched Gradient with k = 3 (so S = ⌈20/3⌉ = 7 steps and the
/// last block has 2 pixels), two thresholds.
fn test_meta(num_images: u64) -> StoreMeta {
    StoreMeta {
        format_version: FORMAT_VERSION,
        model: "resnet20 runs/m.ot".into(),
        model_sha256: "aa".repeat(32),
        dataset: "cifar10".into(),
        dataset_sha256: "bb".repeat(32),
        split: "test".into(),
        method: Method::Gradient { k: 3 },
        thresholds: vec![0.5, 0.9],
        height: 4,
        width: 5,
        num_images,
        seed: 7,
        objective: Objective::LogOdds,
        precision: "fp32".into(),
        created_by: Some(Provenance::current()),
        extra: BTreeMap::new(),
    }
}

/// A plausible record for image `index` of `meta`: a random removal order in blocks
/// of k, a history, and 0–2 disjoint SISes per threshold (none when below τ).
fn record(index: u64, meta: &StoreMeta) -> ImageSis {
    let mut rng = Rng(index.wrapping_mul(1000003) ^ 0x5EED);
    let p = meta.pixels();
    let k = meta.k() as usize;
    let mut perm: Vec<u32> = (0..p as u32).collect();
    for i in (1..p).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut removal_step = vec![0u32; p];
    let mut rank_in_block = vec![0u32; p];
    for (pos, &q) in perm.iter().enumerate() {
        removal_step[q as usize] = (pos / k) as u32;
        rank_in_block[q as usize] = (pos % k) as u32;
    }
    if k == 1 {
        rank_in_block.clear();
    }
    let confidence = 0.3 + 0.7 * rng.unit();
    let confidence_history = (0..meta.steps()).map(|_| rng.unit()).collect();
    let collections = meta
        .thresholds
        .iter()
        .map(|&tau| {
            let n = if confidence >= tau {
                1 + rng.below(2)
            } else {
                0
            };
            let mut sis = Vec::new();
            for j in 0..n as usize {
                // Disjoint: SIS j takes pixels perm[p-1-4j-..] of the removal order.
                let mut s: Vec<u32> = perm[p - 4 * (j + 1)..p - 4 * j]
                    .iter()
                    .copied()
                    .take(1 + rng.below(4) as usize)
                    .collect();
                s.sort_unstable();
                sis.push(s);
            }
            SisCollection {
                threshold: tau,
                sis,
            }
        })
        .collect();
    ImageSis {
        index,
        label: (index % 10) as i64,
        predicted: ((index * 7) % 10) as i64,
        confidence,
        height: meta.height,
        width: meta.width,
        removal_step,
        rank_in_block,
        confidence_history,
        collections,
    }
}

/// Every file of a directory with its bytes: to show a store was left untouched.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_and_lookup() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("store");
    let meta = test_meta(20);
    let mut w = StoreWriter::open(&dir, meta.clone())?;
    // Three segments, out of order and non-contiguous, as a cluster delivers them.
    for batch in [&[5u64, 1, 9][..], &[0, 2], &[17, 12, 13, 14]] {
        for &i in batch {
            assert_eq!(w.append(record(i, &meta))?, Appended::Buffered);
        }
        assert_eq!(w.flush()?, batch.len());
    }
    assert_eq!(w.flush()?, 0, "nothing pending: no empty segment");
    assert_eq!(w.durable_indices(), vec![0, 1, 2, 5, 9, 12, 13, 14, 17]);
    assert_eq!(w.missing(0..6), vec![3, 4]);
    drop(w);
    assert_eq!(segment_files(&dir).len(), 3);

    for verify in [Verify::OnRead, Verify::Full] {
        let r = StoreReader::open_with(&dir, verify)?;
        assert_eq!(r.meta(), &meta);
        assert_eq!(r.len(), 9);
        assert_eq!(r.indices(), vec![0, 1, 2, 5, 9, 12, 13, 14, 17]);
        for i in r.indices() {
            assert_eq!(r.get(i)?, Some(record(i, &meta)), "image {i}");
        }
        assert_eq!(r.get(3)?, None);
        assert!(matches!(
            r.require(3),
            Err(StoreError::NotInStore { index: 3, .. })
        ));
        let all: Vec<ImageSis> = r.iter().collect::<Result<_, _>>()?;
        let got: BTreeSet<u64> = all.iter().map(|x| x.index).collect();
        assert_eq!(got.len(), 9);
        for x in &all {
            assert_eq!(x, &record(x.index, &meta));
        }
    }
    // The manifest lists the segments' indices as ranges.
    let r = StoreReader::open(&dir)?;
    let ranges: Vec<Vec<[u64; 2]>> = r.segments().map(|e| e.indices.clone()).collect();
    assert_eq!(
        ranges,
        vec![
            vec![[1, 2], [5, 6], [9, 10]],
            vec![[0, 1], [2, 3]],
            vec![[12, 15], [17, 18]]
        ]
    );
    Ok(())
}

#[test]
fn missing_collections_are_stored_empty_and_extra_ones_rejected() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(4);
    let mut w = StoreWriter::open(tmp.path(), meta.clone())?;
    let mut rec = record(1, &meta);
    rec.collections = vec![SisCollection {
        threshold: 0.9,
        sis: vec![vec![3, 4]],
    }];
    let _ = w.append(rec.clone())?;
    w.flush()?;
    let got = StoreReader::open(tmp.path())?.require(1)?;
    assert_eq!(
        got.collections,
        vec![
            SisCollection {
                threshold: 0.5,
                sis: vec![]
            },
            SisCollection {
                threshold: 0.9,
                sis: vec![vec![3, 4]]
            },
        ]
    );
    rec.index = 2;
    rec.collections[0].threshold = 0.8;
    let err = w.append(rec).unwrap_err().to_string();
    assert!(
        err.contains("image 2") && err.contains("threshold 0.8"),
        "{err}"
    );
    Ok(())
}

#[test]
fn derived_sis_order_and_subsets_known_answers() -> TestResult {
    // Hand-made run over a 2×3 image, k = 2 (S = 3 steps):
    //   step 0 removes {1, 4}, step 1 {0, 5}, step 2 {2, 3};
    //   f(full) = 0.95, after step 0: 0.9, after step 1: 0.6, after step 2 (all
    //   masked): 0.1.
    // FindSIS (S5) restores blocks from the end until f ≥ τ:
    //   τ = 0.5 → restore step 2: 0.6 ≥ 0.5 → SIS {2, 3};
    //   τ = 0.7 → also step 1: 0.9 ≥ 0.7 → SIS {0, 2, 3, 5};
    //   τ = 0.95 → everything; τ = 0.96 → none (f(x) < τ); τ = 0.05 → the empty set.
    // In-block ranks [0, 1, 1, 0, 0, 1] (step 0: 4 before 1; step 1: 0 before 5;
    // step 2: 3 before 2): removal order by (step, rank) is [4, 1, 0, 5, 3, 2]; the
    // top half is {5, 3, 2}, the last sixth {2}, the last ⌈1.2⌉ = 2 pixels {3, 2}.
    let tmp = tempfile::tempdir()?;
    let mut meta = test_meta(1);
    meta.height = 2;
    meta.width = 3;
    meta.method = Method::Gradient { k: 2 };
    let rec = ImageSis {
        index: 0,
        label: 3,
        predicted: 3,
        confidence: 0.95,
        height: 2,
        width: 3,
        removal_step: vec![1, 0, 2, 2, 0, 1],
        rank_in_block: vec![0, 1, 1, 0, 0, 1],
        confidence_history: vec![0.9, 0.6, 0.1],
        collections: vec![
            SisCollection {
                threshold: 0.5,
                sis: vec![vec![2, 3]],
            },
            SisCollection {
                threshold: 0.9,
                sis: vec![vec![0, 2, 3, 5]],
            },
        ],
    };
    let mut w = StoreWriter::open(tmp.path(), meta)?;
    let _ = w.append(rec)?;
    w.flush()?;
    drop(w);
    let r = StoreReader::open(tmp.path())?;
    assert_eq!(r.sis_for_threshold(0, 0.5)?, Some(vec![2, 3]));
    assert_eq!(r.sis_for_threshold(0, 0.7)?, Some(vec![0, 2, 3, 5]));
    assert_eq!(r.sis_for_threshold(0, 0.95)?, Some(vec![0, 1, 2, 3, 4, 5]));
    assert_eq!(r.sis_for_threshold(0, 0.96)?, None);
    assert_eq!(r.sis_for_threshold(0, 0.05)?, Some(vec![]));
    assert_eq!(r.removal_order(0)?, vec![4, 1, 0, 5, 3, 2]);
    assert_eq!(r.top_fraction_pixels(0, 0.5)?, vec![2, 3, 5]);
    assert_eq!(r.top_fraction_pixels(0, 1.0 / 6.0)?, vec![2]);
    assert_eq!(r.top_fraction_pixels(0, 0.2)?, vec![2, 3]); // ⌈1.2⌉ = 2
    assert!(r.top_fraction_pixels(0, 1.5).is_err());
    assert!(matches!(
        r.sis_for_threshold(1, 0.5),
        Err(StoreError::NotInStore { index: 1, .. })
    ));
    Ok(())
}

#[test]
fn duplicates_are_ignored_and_reported() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    let mut w = StoreWriter::open(tmp.path(), meta.clone())?;
    assert!(w.append(record(4, &meta))?.is_new());
    let mut twin = record(4, &meta);
    twin.label = 99; // a second copy (e.g. from a speculative twin): the first wins
    assert_eq!(w.append(twin.clone())?, Appended::AlreadyPending);
    w.flush()?;
    assert_eq!(w.append(twin.clone())?, Appended::AlreadyDurable);
    assert_eq!(w.pending_count(), 0);
    drop(w);
    let mut w = StoreWriter::open(tmp.path(), meta.clone())?;
    assert_eq!(w.durable_indices(), vec![4]);
    assert_eq!(w.append(twin)?, Appended::AlreadyDurable);
    assert_eq!(w.flush()?, 0);
    drop(w);
    let r = StoreReader::open(tmp.path())?;
    assert_eq!(r.len(), 1);
    assert_eq!(r.require(4)?.label, 4);
    Ok(())
}

#[test]
fn invalid_records_are_rejected_naming_the_image() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    let mut w = StoreWriter::open(tmp.path(), meta.clone())?;
    let mut short = record(3, &meta);
    short.confidence_history.pop();
    let err = w.append(short).unwrap_err().to_string();
    assert!(
        err.contains("image 3") && err.contains("confidence_history has 6"),
        "{err}"
    );
    let err = w.append(record(10, &meta)).unwrap_err().to_string();
    assert!(err.contains("image 10") && err.contains("beyond"), "{err}");
    let mut big = record(2, &meta);
    big.removal_step[0] = 7; // steps are 0..7
    assert!(w
        .append(big)
        .unwrap_err()
        .to_string()
        .contains("removal_step 7"));
    let mut shape = record(2, &meta);
    shape.width = 6;
    assert!(w.append(shape).is_err());
    // k = 3: every block needs its ranks, each of 0..size once.
    let mut unranked = record(2, &meta);
    unranked.rank_in_block.clear();
    let err = w.append(unranked).unwrap_err().to_string();
    assert!(
        err.contains("image 2") && err.contains("rank_in_block has 0"),
        "{err}"
    );
    let mut twice = record(2, &meta);
    let (a, b) = first_two_of_a_block(&twice);
    twice.rank_in_block[b] = twice.rank_in_block[a];
    let err = w.append(twice).unwrap_err().to_string();
    assert!(err.contains("not a free rank"), "{err}");
    let mut beyond = record(2, &meta);
    beyond.rank_in_block[a] = 3;
    assert!(w.append(beyond).is_err());
    assert_eq!(w.pending_count(), 0);
    Ok(())
}

/// Two pixels removed at the same step.
fn first_two_of_a_block(rec: &ImageSis) -> (usize, usize) {
    let s = rec.removal_step[0];
    let b = (1..rec.removal_step.len())
        .find(|&q| rec.removal_step[q] == s)
        .expect("blocks of k = 3 have another pixel");
    (0, b)
}

#[test]
fn format_1_store_is_read_but_not_continued() -> TestResult {
    // A store written by the format-1 code (see tests/fixtures/stores/README.md).
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stores/v1-gradient-k4");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("old");
    std::fs::create_dir(&dir)?;
    for e in std::fs::read_dir(&fixture)? {
        let e = e?;
        std::fs::copy(e.path(), dir.join(e.file_name()))?;
    }
    let r = StoreReader::open(&dir)?;
    assert_eq!(r.meta().format_version, 1);
    assert_eq!(r.meta().objective, Objective::Confidence);
    let mut meta = r.meta().clone();
    drop(r);
    let before = snapshot(&dir);
    meta.format_version = FORMAT_VERSION;
    meta.objective = Objective::LogOdds;
    let err = match StoreWriter::open(&dir, meta) {
        Err(e) => e,
        Ok(_) => panic!("appended to a format-1 store"),
    };
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::OldFormat { found: 1, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("format version 1") && msg.contains("objective confidence"),
        "{msg}"
    );
    assert_eq!(snapshot(&dir), before, "a refused open changed the store");
    Ok(())
}

#[test]
fn another_objective_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    drop(StoreWriter::open(tmp.path(), meta.clone())?);
    let mut other = meta.clone();
    other.objective = Objective::Confidence;
    let msg = match StoreWriter::open(tmp.path(), other) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("resumed a store made with another objective"),
    };
    assert!(
        msg.contains("differ in: objective") && msg.contains("objective log-odds"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn cpu_features_come_from_cpuinfo() {
    let info = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma \
                avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n";
    let p = Provenance::from_cpuinfo(info);
    assert_eq!(p.cpu, "AMD EPYC 7B13");
    assert_eq!(
        p.cpu_features,
        ["avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
    );
    let arm = Provenance::from_cpuinfo("Features\t: fp asimd asimdhp sve\nCPU part\t: 0xd0c\n");
    assert_eq!(arm.cpu_features, ["asimd", "asimdhp", "sve"]);
    assert_eq!(arm.cpu, "0xd0c");
}

#[test]
fn another_models_meta_is_refused_and_the_store_untouched() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("s");
    let meta = test_meta(10);
    let mut w = StoreWriter::open(&dir, meta.clone())?;
    let _ = w.append(record(1, &meta))?;
    w.flush()?;
    drop(w);
    let before = snapshot(&dir);

    let mut other = meta.clone();
    other.model = "vgg16 runs/v.ot".into();
    other.model_sha256 = "cc".repeat(32);
    other.thresholds = vec![0.99];
    let err = match StoreWriter::open(&dir, other.clone()) {
        Err(e) => e,
        Ok(_) => panic!("opened a store of another model"),
    };
    let msg = err.to_string();
    assert!(matches!(err, StoreError::MetaMismatch { .. }));
    for needle in [
        "was made by model `resnet20 runs/m.ot`",
        "you asked for model `vgg16 runs/v.ot`",
        "model, model_sha256, thresholds",
        dir.to_str().unwrap(),
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    assert_eq!(snapshot(&dir), before, "a refused open changed the store");
    assert!(matches!(
        StoreReader::open_expecting(&dir, &other, Verify::OnRead),
        Err(StoreError::MetaMismatch { .. })
    ));
    // Same meta: fine.
    StoreReader::open_expecting(&dir, &meta, Verify::Full)?;
    Ok(())
}

#[test]
fn non_store_directories_and_second_writers_are_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("notes.txt"), "mine")?;
    let err = StoreWriter::open(tmp.path(), test_meta(3)).err().unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    assert!(matches!(
        StoreReader::open(tmp.path()),
        Err(StoreError::NoStore { .. })
    ));

    let dir = tmp.path().join("s");
    let _w = StoreWriter::open(&dir, test_meta(3))?;
    let err = StoreWriter::open(&dir, test_meta(3)).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let mut bad = test_meta(3);
    bad.method = Method::Gradient { k: 0 };
    assert!(matches!(
        StoreWriter::open(tmp.path().join("t"), bad),
        Err(StoreError::InvalidMeta { .. })
    ));
    Ok(())
}

/// Writes images `0..n` in flushes of `batch`.
fn write_store(dir: &Path, meta: &StoreMeta, indices: &[u64], batch: usize) -> TestResult {
    let mut w = StoreWriter::open(dir, meta.clone())?;
    for chunk in indices.chunks(batch) {
        for &i in chunk {
            let _ = w.append(record(i, meta))?;
        }
        w.flush()?;
    }
    Ok(())
}

#[test]
fn flipped_byte_in_a_segment_is_a_checksum_error_naming_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    write_store(tmp.path(), &meta, &[0, 1, 2, 3, 4, 5], 3)?;
    let seg = segment_files(tmp.path())[1].clone();
    let mut bytes = std::fs::read(&seg)?;
    let at = bytes.len() - 10; // inside the tensor data
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes)?;
    let name = seg.file_name().unwrap().to_str().unwrap().to_string();

    // Full verification fails at open.
    let err = StoreReader::open_with(tmp.path(), Verify::Full)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    // Lazy verification: the intact segment reads, the damaged one errors on use.
    let r = StoreReader::open(tmp.path())?;
    assert_eq!(r.get(0)?, Some(record(0, &meta)));
    let err = r.get(4).unwrap_err();
    assert!(matches!(err, StoreError::Checksum { .. }) && err.to_string().contains(&name));
    let results: Vec<_> = r.iter().collect();
    assert!(
        results.last().unwrap().is_err(),
        "iteration must surface the bad segment"
    );
    Ok(())
}

#[test]
fn truncated_or_missing_segment_is_an_error_naming_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    write_store(tmp.path(), &meta, &[0, 1, 2, 3], 2)?;
    let segs = segment_files(tmp.path());
    let f = std::fs::OpenOptions::new().write(true).open(&segs[0])?;
    f.set_len(f.metadata()?.len() - 1)?;
    let err = StoreReader::open(tmp.path()).err().unwrap().to_string();
    assert!(
        err.contains("seg-00000001.safetensors") && err.contains("truncated"),
        "{err}"
    );
    let err = StoreWriter::open(tmp.path(), meta.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("seg-00000001.safetensors"), "{err}");
    std::fs::remove_file(&segs[0])?;
    let err = StoreReader::open(tmp.path()).err().unwrap().to_string();
    assert!(
        err.contains("seg-00000001.safetensors") && err.contains("missing"),
        "{err}"
    );
    Ok(())
}

#[test]
fn damaged_manifest_line_is_an_error_naming_the_line() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    write_store(tmp.path(), &meta, &[0, 1, 2, 3], 2)?;
    let path = tmp.path().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)?;
    // A changed value that still parses (count 2 → 3 with its ranges): the check
    // digest catches it.
    let edited = text
        .replacen("\"indices\":[[0,2]]", "\"indices\":[[0,3]]", 1)
        .replacen("\"count\":2", "\"count\":3", 1);
    assert_ne!(edited, text);
    std::fs::write(&path, &edited)?;
    let err = StoreReader::open(tmp.path()).err().unwrap().to_string();
    assert!(
        err.contains("manifest.jsonl line 1") && err.contains("check digest"),
        "{err}"
    );
    // A line that no longer parses, followed by a good one: corruption, not a torn tail.
    let broken = text.replacen("{\"segment\"", "{\"segm", 1);
    std::fs::write(&path, &broken)?;
    let err = StoreWriter::open(tmp.path(), meta)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("manifest.jsonl line 1"), "{err}");
    Ok(())
}

#[test]
fn crash_leftovers_are_invisible_and_cleaned_up() -> TestResult {
    // Reproduce each state a kill can leave, by hand:
    //  (a) a segment `.tmp` (killed while writing it),
    //  (b) a renamed segment with no manifest line (killed before the append),
    //  (c) a torn last manifest line (killed during the append, before its fsync).
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let meta = test_meta(20);
    write_store(dir, &meta, &[0, 1, 2, 3], 2)?;
    // Make a third segment the normal way in a scratch store, then plant its pieces.
    let scratch = tempfile::tempdir()?;
    write_store(scratch.path(), &meta, &[0, 1, 2, 3], 2)?;
    let mut w = StoreWriter::open(scratch.path(), meta.clone())?;
    let _ = w.append(record(10, &meta))?;
    w.flush()?;
    drop(w);
    let third = scratch.path().join("seg-00000003.safetensors");
    let third_line = std::fs::read_to_string(scratch.path().join(MANIFEST_FILE))?
        .lines()
        .nth(2)
        .unwrap()
        .to_string();
    std::fs::copy(&third, dir.join("seg-00000003.safetensors"))?; // (b)
    std::fs::write(dir.join("seg-00000004.safetensors.tmp"), b"partial")?; // (a)
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(MANIFEST_FILE))?;
    m.write_all(&third_line.as_bytes()[..third_line.len() / 2])?; // (c)
    drop(m);

    let r = StoreReader::open(dir)?;
    assert_eq!(
        r.indices(),
        vec![0, 1, 2, 3],
        "an unacknowledged record became visible"
    );
    assert!(r.torn_manifest_bytes() > 0);
    drop(r);

    let mut w = StoreWriter::open(dir, meta.clone())?;
    let rec = w.recovery().clone();
    assert_eq!(rec.torn_manifest_bytes, (third_line.len() / 2) as u64);
    let removed: BTreeSet<String> = rec
        .removed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        removed,
        BTreeSet::from([
            "seg-00000003.safetensors".to_string(),
            "seg-00000004.safetensors.tmp".to_string()
        ])
    );
    assert_eq!(w.durable_indices(), vec![0, 1, 2, 3]);
    let _ = w.append(record(10, &meta))?;
    w.flush()?;
    drop(w);
    let r = StoreReader::open_with(dir, Verify::Full)?;
    assert_eq!(r.torn_manifest_bytes(), 0);
    assert_eq!(r.indices(), vec![0, 1, 2, 3, 10]);
    assert_eq!(r.require(10)?, record(10, &meta));
    Ok(())
}

#[test]
fn payloads_round_trip_and_feed_the_writer_once() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    let rec = record(6, &meta);
    let bytes = encode_payload(&rec);
    assert_eq!(decode_payload(6, &bytes)?, rec);
    assert!(matches!(
        decode_payload(5, &bytes),
        Err(StoreError::BadPayload { index: 5, .. })
    ));
    assert!(decode_payload(6, &bytes[..bytes.len() - 3]).is_err());
    let mut w = StoreWriter::open(tmp.path(), meta)?;
    assert!(w.append_payload(6, &bytes)?);
    assert!(!w.append_payload(6, &bytes)?);
    w.flush()?;
    assert!(!w.append_payload(6, &bytes)?);
    Ok(())
}

#[test]
fn store_is_the_leaders_result_sink() -> TestResult {
    use overinterp_cluster::ResultSink;
    // Driven only through the trait, in the leader's order: appends, then sync.
    fn feed(sink: &mut dyn ResultSink, meta: &StoreMeta, indices: &[u64]) -> Vec<bool> {
        let taken = indices
            .iter()
            .map(|&i| sink.append(i, &encode_payload(&record(i, meta))).unwrap())
            .collect();
        sink.sync().unwrap();
        taken
    }
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(10);
    let mut w = StoreWriter::open(tmp.path(), meta.clone())?;
    assert_eq!(feed(&mut w, &meta, &[2, 5, 2]), vec![true, true, false]);
    drop(w);
    let mut w = StoreWriter::open(tmp.path(), meta.clone())?;
    assert_eq!(ResultSink::durable_indices(&w), vec![2, 5]);
    assert_eq!(feed(&mut w, &meta, &[5, 7]), vec![false, true]);
    let err = ResultSink::append(&mut w, 3, b"garbage")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image 3") && err.contains(tmp.path().to_str().unwrap()),
        "{err}"
    );
    drop(w);
    assert_eq!(StoreReader::open(tmp.path())?.indices(), vec![2, 5, 7]);
    Ok(())
}

// ---------------------------------------------------------------------------------
// SIGKILL and resume.

/// Env var that turns the ignored `sigkill_child` test into the child job.
const CHILD_ENV: &str = "OVERINTERP_STORE_TEST_CHILD_DIR";
const JOB_IMAGES: u64 = 1500;
/// Appends per flush in the child; small, so that 3 kills × 40 acks stay far from the end.
const CHILD_BATCH: usize = 5;

/// The job: every image of the split in a fixed shuffled order (as a cluster delivers
/// them), every third one twice, flushing every `batch` appends and reporting the
/// indices each flush acknowledged. Resumes from whatever is durable.
fn run_job(dir: &Path, batch_size: usize, mut on_ack: impl FnMut(&[u64])) -> TestResult {
    let meta = test_meta(JOB_IMAGES);
    let mut order: Vec<u64> = (0..JOB_IMAGES).collect();
    let mut rng = Rng(42);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut w = StoreWriter::open(dir, meta.clone())?;
    let mut batch = Vec::new();
    for &i in &order {
        if w.is_durable(i) {
            continue;
        }
        let copies = if i % 3 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            if w.append(record(i, &meta))?.is_new() {
                batch.push(i);
            }
        }
        if w.pending_count() >= batch_size {
            w.flush()?;
            on_ack(&batch);
            batch.clear();
        }
    }
    w.flush()?;
    on_ack(&batch);
    Ok(())
}

#[test]
#[ignore = "helper: run as a child process by sigkill_mid_run_then_resume_equals_uninterrupted"]
fn sigkill_child() -> TestResult {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    let stdout = std::io::stdout();
    run_job(Path::new(&dir), CHILD_BATCH, |acked| {
        let mut out = stdout.lock();
        let list: Vec<String> = acked.iter().map(u64::to_string).collect();
        let _ = writeln!(out, "ACK {}", list.join(","));
        let _ = out.flush();
    })?;
    println!("DONE");
    Ok(())
}

/// Starts the child job on `dir`, kills it with SIGKILL after `acks` acknowledged
/// flushes, and returns the indices it acknowledged (false if it finished first).
fn run_child_and_kill(
    dir: &Path,
    acks: usize,
) -> Result<(BTreeSet<u64>, bool), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "store::tests::sigkill_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut acked = BTreeSet::new();
    let mut seen = 0;
    let mut finished = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(list) = line.strip_prefix("ACK ") {
            acked.extend(
                list.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u64>().unwrap()),
            );
            seen += 1;
            if seen == acks {
                child.kill()?; // SIGKILL: no destructor, no flush, mid-whatever
                break;
            }
        }
        if line.contains("DONE") {
            finished = true;
        }
    }
    let status = child.wait()?;
    use std::os::unix::process::ExitStatusExt;
    if !finished {
        assert_eq!(
            status.signal(),
            Some(9),
            "child was not killed by SIGKILL: {status:?}"
        );
    }
    Ok((acked, finished))
}

#[test]
fn sigkill_mid_run_then_resume_equals_uninterrupted() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let killed = tmp.path().join("killed");
    let meta = test_meta(JOB_IMAGES);

    let mut acknowledged = BTreeSet::new();
    for round in 0..3 {
        let (acked, finished) = run_child_and_kill(&killed, 40)?;
        assert!(
            !finished,
            "round {round}: the job finished before it could be killed"
        );
        acknowledged.extend(acked);
        // Every acknowledged record is there, nothing partial is visible, and every
        // visible record is whole and correct.
        let r = StoreReader::open_with(&killed, Verify::Full)?;
        let held: BTreeSet<u64> = r.indices().into_iter().collect();
        assert!(
            acknowledged.is_subset(&held),
            "round {round}: lost acknowledged records {:?}",
            acknowledged.difference(&held).take(5).collect::<Vec<_>>()
        );
        for x in r.iter() {
            let x = x?;
            assert_eq!(x, record(x.index, &meta));
        }
    }
    // Finish in-process, then compare with a run that was never interrupted (with
    // other flush sizes: segmentation differs, content must not).
    run_job(&killed, 64, |_| {})?;
    let clean = tmp.path().join("clean");
    run_job(&clean, 100, |_| {})?;
    let a = StoreReader::open_with(&killed, Verify::Full)?;
    let b = StoreReader::open_with(&clean, Verify::Full)?;
    assert_eq!(a.meta(), b.meta());
    assert_eq!(a.indices(), (0..JOB_IMAGES).collect::<Vec<_>>());
    assert_eq!(a.indices(), b.indices());
    for i in a.indices() {
        assert_eq!(a.get(i)?, b.get(i)?, "image {i}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Python.

/// The first ```python block of `src/store/README.md`: the snippet users copy.
fn readme_snippet() -> Result<String, Box<dyn std::error::Error>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/README.md"))?;
    let start = readme
        .find("```python\n")
        .ok_or("no python block in README")?
        + 10;
    let len = readme[start..]
        .find("\n```")
        .ok_or("unterminated python block")?;
    Ok(readme[start..start + len].to_string())
}

#[test]
fn readme_python_snippet_reads_what_rust_wrote() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let meta = test_meta(30);
    write_store(tmp.path(), &meta, &[3, 8, 21, 4, 11, 17, 29], 3)?;
    let r = StoreReader::open(tmp.path())?;
    // A torn tail must not confuse the Python reader either.
    std::fs::OpenOptions::new()
        .append(true)
        .open(tmp.path().join(MANIFEST_FILE))?
        .write_all(b"{\"segment\":\"seg-000")?;

    let driver = r#"
import json, math, sys
store, index = sys.argv[1], int(sys.argv[2])
rec = load_image(store, index)
p = rec["order"].size
out = {
    "order": rec["order"].tolist(),
    "top": sorted(rec["order"][p - math.ceil(0.25 * p):].tolist()),
    "thresholds": list(rec["sis"].keys()),
    "sis": [[s.tolist() for s in v] for v in rec["sis"].values()],
    "label": rec["label"], "predicted": rec["predicted"],
    "confidence": rec["confidence"],
    "history": rec["confidence_history"].tolist(),
    "shape": list(rec["removal_step"].shape),
}
try:  # the official reader must agree where it is installed
    from safetensors.numpy import load_file
    import glob
    seg = [f for f in sorted(glob.glob(store + "/seg-*.safetensors"))
           if index in load_file(f)["index"]][0]
    ref, mine = load_file(seg), load_segment(seg)
    assert ref.keys() == mine.keys()
    for k in ref:
        assert ref[k].dtype == mine[k].dtype and (ref[k] == mine[k]).all(), k
    out["safetensors_checked"] = True
except ImportError:
    out["safetensors_checked"] = False
print(json.dumps(out))
"#;
    let program = format!("{}\n{driver}", readme_snippet()?);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    for index in [3u64, 21, 29] {
        let out = Command::new(&python)
            .arg("-c")
            .arg(&program)
            .arg(tmp.path())
            .arg(index.to_string())
            .output()
            .map_err(|e| format!("cannot run {python} (source scripts/env first): {e}"))?;
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let want = r.require(index)?;
        let order: Vec<u32> = serde_json::from_value(got["order"].clone())?;
        assert_eq!(order, r.removal_order(index)?, "image {index}");
        let top: Vec<u32> = serde_json::from_value(got["top"].clone())?;
        assert_eq!(top, r.top_fraction_pixels(index, 0.25)?);
        let thresholds: Vec<f32> = serde_json::from_value(got["thresholds"].clone())?;
        assert_eq!(thresholds, meta.thresholds);
        let sis: Vec<Vec<Vec<u32>>> = serde_json::from_value(got["sis"].clone())?;
        let want_sis: Vec<Vec<Vec<u32>>> = want.collections.iter().map(|c| c.sis.clone()).collect();
        assert_eq!(sis, want_sis, "image {index}");
        assert_eq!(got["label"], want.label);
        assert_eq!(got["predicted"], want.predicted);
        // serde_json's default float parse may be off by an ulp of f64; compare as f32.
        assert_eq!(
            got["confidence"].as_f64().map(|c| c as f32),
            Some(want.confidence)
        );
        let history: Vec<f32> = serde_json::from_value(got["history"].clone())?;
        assert_eq!(history, want.confidence_history);
        assert_eq!(got["shape"], serde_json::json!([4, 5]));
        eprintln!(
            "python reader ok for image {index}; safetensors cross-check: {}",
            got["safetensors_checked"]
        );
    }
    Ok(())
}

/// A store written before `--precision` carried `extra.autocast = "false"` next to
/// `precision = "fp32"`; today's job (no such key) must resume it, and one with
/// autocast on must not resume as fp32.
#[test]
fn stores_from_before_precision_resume() -> TestResult {
    for (autocast, resumes) in [("false", true), ("true", false)] {
        let tmp = tempfile::tempdir()?;
        let meta = test_meta(4);
        let mut w = StoreWriter::open(tmp.path(), meta.clone())?;
        let _ = w.append(record(1, &meta))?;
        w.flush()?;
        drop(w);
        // The meta as the previous release wrote it.
        let file = tmp.path().join(META_FILE);
        let mut old: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        old["extra"]["autocast"] = autocast.into();
        std::fs::write(&file, serde_json::to_vec_pretty(&old)?)?;
        match StoreWriter::open(tmp.path(), meta.clone()) {
            Ok(w) => {
                assert!(resumes, "autocast {autocast}: resumed as fp32");
                assert_eq!(w.durable_indices(), vec![1]);
            }
            Err(e) => assert!(!resumes, "autocast {autocast}: {e}"),
        }
        assert_eq!(
            StoreReader::open(tmp.path())?.meta().precision,
            if resumes { "fp32" } else { "autocast" }
        );
    }
    Ok(())
}
