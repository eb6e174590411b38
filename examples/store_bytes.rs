//! Bytes per image of a result store, for the paper's two settings: CIFAR-10 with exact
//! BackSelect (32×32, 1,024 steps) and ImageNet with Batched Gradient k = 100 (299×299,
//! 895 steps). Writes 64 synthetic records of each (a random removal order in blocks
//! of k with in-block ranks, a confidence history, one threshold with 3 disjoint SISes
//! of 5% of the pixels each) with the real writer, in segments of 32 (the SIS
//! mini-batch), and prints segment + manifest bytes per image. The records go through
//! serde so the same file builds against store formats with and without
//! `rank_in_block`.
//!
//! ```sh
//! cargo run --release --example store_bytes
//! ```

use overinterp::sis::ImageSis;
use overinterp::store::{StoreMeta, StoreWriter, FORMAT_VERSION};

const IMAGES: u64 = 64;

fn main() -> anyhow::Result<()> {
    println!("store format {FORMAT_VERSION}");
    println!(
        "{:<28} {:>8} {:>8} {:>14}",
        "setting", "pixels", "steps", "bytes/image"
    );
    for (name, side, k) in [
        ("CIFAR-10 exact", 32u32, 1u32),
        ("ImageNet gradient k=100", 299, 100),
    ] {
        let dir = tempdir()?;
        let method = if k == 1 {
            serde_json::json!({"kind": "exact"})
        } else {
            serde_json::json!({"kind": "gradient", "k": k})
        };
        // The meta through JSON as well, so fields added in later formats default.
        let meta: StoreMeta = serde_json::from_value(serde_json::json!({
            "format_version": FORMAT_VERSION,
            "model": "synthetic", "model_sha256": "00", "dataset": "synthetic",
            "dataset_sha256": "00", "split": "test", "method": method,
            "thresholds": [0.99], "height": side, "width": side,
            "num_images": IMAGES, "seed": 0, "objective": "log-odds",
        }))
        .or_else(|_| {
            serde_json::from_value(serde_json::json!({
                "format_version": FORMAT_VERSION,
                "model": "synthetic", "model_sha256": "00", "dataset": "synthetic",
                "dataset_sha256": "00", "split": "test", "method": method,
                "thresholds": [0.99], "height": side, "width": side,
                "num_images": IMAGES, "seed": 0,
            }))
        })?;
        let steps = meta.steps();
        let mut writer = StoreWriter::open(dir.join("store"), meta.clone())?;
        for index in 0..IMAGES {
            let _ = writer.append(record(index, &meta)?)?;
            if writer.pending_count() == 32 {
                writer.flush()?;
            }
        }
        writer.flush()?;
        drop(writer);
        let mut bytes = 0u64;
        for entry in std::fs::read_dir(dir.join("store"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("seg-") || name == "manifest.jsonl" {
                bytes += entry.metadata()?.len();
            }
        }
        println!(
            "{name:<28} {:>8} {steps:>8} {:>14.0}",
            meta.pixels(),
            bytes as f64 / IMAGES as f64
        );
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// A plausible record: random order in blocks of k, ranks inside blocks, a history,
/// three disjoint SISes of 5% of the pixels, taken from the end of the order.
fn record(index: u64, meta: &StoreMeta) -> anyhow::Result<ImageSis> {
    let p = meta.pixels();
    let k = meta.k() as usize;
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut perm: Vec<u32> = (0..p as u32).collect();
    for i in (1..p).rev() {
        perm.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let mut step = vec![0u32; p];
    let mut rank = vec![0u32; p];
    for (pos, &q) in perm.iter().enumerate() {
        step[q as usize] = (pos / k) as u32;
        rank[q as usize] = (pos % k) as u32;
    }
    let history: Vec<f32> = (0..meta.steps())
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    let m = p.div_ceil(20);
    let sis: Vec<Vec<u32>> = (0..3)
        .map(|j| {
            let mut s = perm[p - m * (j + 1)..p - m * j].to_vec();
            s.sort_unstable();
            s
        })
        .collect();
    let value = serde_json::json!({
        "index": index, "label": 0, "predicted": 0, "confidence": 0.999,
        "height": meta.height, "width": meta.width,
        "removal_step": step,
        "rank_in_block": if k > 1 { rank } else { Vec::new() },
        "confidence_history": history,
        "collections": [{"threshold": 0.99, "sis": sis}],
    });
    Ok(serde_json::from_value(value)?)
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("store-bytes-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
