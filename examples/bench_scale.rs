//! `scripts/bench-scale` helper: the pieces of the scale benchmark that have no CLI
//! command of their own. Each subcommand runs in its own process so the script can
//! take its peak RSS (`/usr/bin/time`):
//!
//! - `write-store DIR N`: N synthetic 299×299 Batched Gradient (k = 100) records
//!   written through the store's writer in segments of 32 (no model);
//! - `masks SUBSETS N`: reads the masks of images `0..N` of a subset dataset in
//!   batches of 32, as training does;
//! - `analyses STORE OUT`: every store analysis in one pass, plus the gallery PNG,
//!   into `OUT/analyses.json`;
//! - `report OUT`: the report (Markdown, HTML, figures) from `OUT/analyses.json`;
//! - `make-imagenet DIR N`: ImageNet-layout folders of N real JPEGs of varied
//!   content (`val/<wnid>/*.JPEG`, 10 classes, sizes around 300–500 px);
//! - `step-rate MODEL`: seconds per forward + backward-to-the-mask step of a
//!   TorchScript model on a batch of 32 299×299 images (the SIS reference).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use overinterp::data::{DataError, ImageSource, Normalization};
use overinterp::pipeline::analyses::Analyses;
use overinterp::pipeline::analysis;
use overinterp::sis::{ImageSis, Method};
use overinterp::store::{StoreMeta, StoreWriter, FORMAT_VERSION};
use overinterp::util::SplitMix64;

const SIDE: u32 = 299;
const K: u32 = 100;
const CLASSES: usize = 10;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i).map(String::as_str).with_context(|| {
            format!("missing argument {i}; see the doc of examples/bench_scale.rs")
        })
    };
    let number = |i: usize| -> anyhow::Result<usize> {
        arg(i)?
            .parse()
            .with_context(|| format!("argument {i} is not a number"))
    };
    match arg(0)? {
        "write-store" => write_store(Path::new(arg(1)?), number(2)?),
        "masks" => read_masks(Path::new(arg(1)?), number(2)?),
        "analyses" => analyses(Path::new(arg(1)?), Path::new(arg(2)?)),
        "report" => report(Path::new(arg(1)?)),
        "make-imagenet" => make_imagenet(Path::new(arg(1)?), number(2)?),
        "step-rate" => step_rate(arg(1)?),
        other => bail!("unknown subcommand {other:?}"),
    }
}

fn meta(n: u64) -> StoreMeta {
    StoreMeta {
        format_version: FORMAT_VERSION,
        model: "synthetic (bench-scale)".into(),
        model_sha256: "00".repeat(32),
        dataset: "synthetic/299".into(),
        dataset_sha256: "11".repeat(32),
        split: "test".into(),
        method: Method::Gradient { k: K },
        thresholds: vec![0.9],
        height: SIDE,
        width: SIDE,
        num_images: n,
        seed: 0,
        objective: overinterp::sis::Objective::LogOdds,
        precision: "fp32".into(),
        created_by: None,
        extra: BTreeMap::new(),
    }
}

/// A record of image `index`: a random removal order in blocks of k and a history
/// that falls as pixels are removed, so FindSIS finds SISes of varied size.
fn record(index: u64, meta: &StoreMeta) -> ImageSis {
    let mut rng = SplitMix64::stream(7, index);
    let p = meta.pixels();
    let steps = meta.steps();
    let mut order: Vec<u32> = (0..p as u32).collect();
    rng.shuffle(&mut order);
    let mut removal_step = vec![0u32; p];
    let mut rank_in_block = vec![0u32; p];
    for (pos, &q) in order.iter().enumerate() {
        removal_step[q as usize] = (pos / K as usize) as u32;
        rank_in_block[q as usize] = (pos % K as usize) as u32;
    }
    let confidence = 0.5 + 0.5 * (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    let knee = 0.5 + 0.5 * (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    let confidence_history = (0..steps)
        .map(|s| {
            let t = (s + 1) as f32 / steps as f32;
            if t < knee {
                confidence
            } else {
                confidence * (1.0 - t) / (1.0 - knee).max(1e-3)
            }
        })
        .collect();
    ImageSis {
        index,
        label: (index % CLASSES as u64) as i64,
        predicted: ((index * 7 + index / 3) % CLASSES as u64) as i64,
        confidence,
        height: SIDE,
        width: SIDE,
        removal_step,
        rank_in_block,
        confidence_history,
        collections: Vec::new(),
    }
}

fn write_store(dir: &Path, n: usize) -> anyhow::Result<()> {
    let meta = meta(n as u64);
    let mut writer = StoreWriter::open(dir, meta.clone())?;
    let started = Instant::now();
    for index in 0..n as u64 {
        let _ = writer.append(record(index, &meta))?;
        if (index + 1) % 32 == 0 {
            writer.flush()?;
        }
    }
    writer.flush()?;
    println!(
        "wrote {n} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn read_masks(dir: &Path, n: usize) -> anyhow::Result<()> {
    let masks = overinterp::subsets::open_masks(&dir.to_string_lossy(), (299, 299))?;
    let indices: Vec<usize> = (0..n).collect();
    let mut kept = 0.0;
    for chunk in indices.chunks(32) {
        kept += masks.masks(chunk)?.sum(tch::Kind::Double).double_value(&[]);
    }
    println!(
        "read masks of {n} images, {:.1} pixels kept on average",
        kept / n as f64
    );
    Ok(())
}

/// Procedural 299×299 images: the gallery reads the few it shows, never all.
struct Synthetic {
    n: usize,
}

impl ImageSource for Synthetic {
    fn name(&self) -> String {
        "synthetic/299".into()
    }
    fn len(&self) -> usize {
        self.n
    }
    fn shape(&self) -> [usize; 3] {
        [3, SIDE as usize, SIDE as usize]
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn normalization(&self) -> Normalization {
        Normalization::imagenet()
    }
    fn label(&self, index: usize) -> Result<i64, DataError> {
        Ok((index % CLASSES) as i64)
    }
    fn read_pixels(&self, indices: &[usize], out: &mut [u8]) -> Result<(), DataError> {
        let plane = (SIDE * SIDE) as usize;
        for (&i, img) in indices.iter().zip(out.chunks_exact_mut(3 * plane)) {
            for (q, px) in img.iter_mut().enumerate() {
                *px = ((q % plane) as u64 * 31 + i as u64 * 17 + (q / plane) as u64 * 80) as u8;
            }
        }
        Ok(())
    }
    fn content_hash(&self) -> String {
        "synthetic".into()
    }
}

fn analyses(store: &Path, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let reader = overinterp::store::StoreReader::open(store)?;
    let n = reader.meta().num_images as usize;
    let started = Instant::now();
    let sweep = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];
    let s = analysis::analyze_store("synthetic", &reader, &sweep, 0.9, 0.10)?;
    // No model here (synthetic records): the gallery is drawn unverified, (0, 0),
    // and its caption says so.
    let gallery = s
        .gallery
        .write("synthetic", &Synthetic { n }, out, (0, 0))?;
    let a = Analyses {
        name: "bench-scale".into(),
        dataset: "synthetic/299".into(),
        train_images: 0,
        test_images: n,
        class_names: (0..CLASSES).map(|c| format!("class {c}")).collect(),
        fraction: 0.10,
        settings: vec![("Records".into(), n.to_string())],
        table1: Vec::new(),
        corruption: Vec::new(),
        stability: Vec::new(),
        confidence: Vec::new(),
        sis_size: vec![s.sis_size],
        correct_vs_wrong: vec![s.correct_vs_wrong],
        corrupted_correct_vs_wrong: Vec::new(),
        heatmaps: s.heatmaps,
        confidence_history: vec![s.confidence_history],
        transfer: None,
        galleries: vec![gallery],
        spec: String::new(),
    };
    std::fs::write(out.join("analyses.json"), serde_json::to_vec(&a)?)?;
    println!(
        "analysed {} records in {:.1} s",
        s.images,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn report(out: &Path) -> anyhow::Result<()> {
    let a: Analyses = serde_json::from_slice(&std::fs::read(out.join("analyses.json"))?)?;
    overinterp::pipeline::report::write_report(&a, out)?;
    println!("report written to {}", out.display());
    Ok(())
}

/// One RGB picture of class `class`: a two-colour gradient, a few discs and bars,
/// and noise, so JPEG sizes and decoding costs vary as with photographs.
fn picture(rng: &mut SplitMix64, class: usize, w: usize, h: usize) -> Vec<u8> {
    let mut r = |n: usize| rng.below(n);
    let base = [(class * 25) % 256, r(256), r(256)];
    let tilt = [r(256), (class * 70) % 256, r(256)];
    let shapes: Vec<(usize, usize, usize, [usize; 3])> = (0..3 + r(6))
        .map(|_| (r(w), r(h), 10 + r(w / 4), [r(256), r(256), r(256)]))
        .collect();
    let noise = 4 + r(40);
    let mut px = vec![0u8; w * h * 3];
    let mut state = SplitMix64::new((w * h + class) as u64);
    for y in 0..h {
        for x in 0..w {
            let t = (x + y) as f64 / (w + h) as f64;
            let mut c = [0f64; 3];
            for ch in 0..3 {
                c[ch] = base[ch] as f64 * (1.0 - t) + tilt[ch] as f64 * t;
            }
            for &(cx, cy, rad, col) in &shapes {
                let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
                if dx * dx + dy * dy < (rad * rad) as i64 || (dx.abs() < 4 && dy.abs() < rad as i64)
                {
                    c = [col[0] as f64, col[1] as f64, col[2] as f64];
                }
            }
            for ch in 0..3 {
                let n = state.below(2 * noise) as f64 - noise as f64;
                px[(y * w + x) * 3 + ch] = (c[ch] + n).clamp(0.0, 255.0) as u8;
            }
        }
    }
    px
}

fn make_imagenet(root: &Path, n: usize) -> anyhow::Result<()> {
    let mut rng = SplitMix64::new(2021);
    let mut bytes = 0u64;
    for i in 0..n {
        let class = i % CLASSES;
        let dir: PathBuf = root.join("val").join(format!("n{:08}", 1000 + class));
        std::fs::create_dir_all(&dir)?;
        let (w, h) = (300 + rng.below(200), 300 + rng.below(150));
        let px = picture(&mut rng, class, w, h);
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 85).encode(
            &px,
            w as u16,
            h as u16,
            jpeg_encoder::ColorType::Rgb,
        )?;
        bytes += jpeg.len() as u64;
        std::fs::write(dir.join(format!("ILSVRC2012_val_{i:08}.JPEG")), jpeg)?;
    }
    println!(
        "wrote {n} JPEGs ({:.1} KB each on average) under {}",
        bytes as f64 / n.max(1) as f64 / 1024.0,
        root.display()
    );
    Ok(())
}

fn step_rate(model: &str) -> anyhow::Result<()> {
    let m = overinterp::models::load_model(model, tch::Device::Cpu, [3, 299, 299])?;
    let x = tch::Tensor::randn([32, 3, 299, 299], (tch::Kind::Float, tch::Device::Cpu));
    let mut times = Vec::new();
    for round in 0..4 {
        let mask = tch::Tensor::zeros([32, 1, 299, 299], (tch::Kind::Float, tch::Device::Cpu))
            .set_requires_grad(true);
        let started = Instant::now();
        let logits = m.forward(&(&x * (1.0 - &mask)), false)?;
        let f = logits
            .softmax(-1, tch::Kind::Float)
            .max_dim(-1, false)
            .0
            .sum(tch::Kind::Float);
        let g = tch::Tensor::run_backward(&[f], &[&mask], false, false);
        let _ = g[0].sum(tch::Kind::Float).double_value(&[]);
        if round > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!("{mean:.5}");
    Ok(())
}
