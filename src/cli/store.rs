//! `overinterp store info STORE`: what a result store is and how much it holds, read
//! from its meta and manifest without decoding a record.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::store::{Provenance, StoreReader, READABLE_VERSIONS};

/// Inspect SIS result stores.
#[derive(Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Show a store's format, objective, precision, method and counts.
    ///
    /// Examples:
    ///   overinterp store info stores/r20-test
    ///   overinterp store info stores/incv3-val --json
    #[command(verbatim_doc_comment)]
    Info(InfoArgs),
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The store directory.
    pub store: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `store info` reports.
#[derive(Serialize)]
struct Info {
    store: String,
    format_version: u32,
    /// `removal_step` element type in this store's segments.
    removal_step_dtype: &'static str,
    /// `rank_in_block` element type, if the store has that tensor.
    rank_in_block_dtype: Option<&'static str>,
    method: String,
    k: u32,
    /// Candidates per step of the screened method (`M`).
    #[serde(skip_serializing_if = "Option::is_none")]
    screen: Option<u32>,
    steps: usize,
    height: u32,
    width: u32,
    objective: String,
    precision: String,
    thresholds: Vec<f32>,
    images: usize,
    num_images: u64,
    complete: bool,
    segments: usize,
    segment_bytes: u64,
    bytes_per_image: Option<f64>,
    model: String,
    model_sha256: String,
    dataset: String,
    dataset_sha256: String,
    split: String,
    seed: u64,
    created_by: Option<Provenance>,
    torn_manifest_bytes: u64,
}

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Info(a) => info(a),
    }
}

fn dtype_name(d: safetensors::Dtype) -> &'static str {
    match d {
        safetensors::Dtype::U8 => "uint8",
        safetensors::Dtype::U16 => "uint16",
        safetensors::Dtype::I32 => "int32",
        _ => "other",
    }
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let reader = StoreReader::open(&args.store)?;
    let meta = reader.meta();
    let (segments, bytes) = reader
        .segments()
        .fold((0, 0), |(n, b), e| (n + 1, b + e.bytes));
    let images = reader.len();
    let info = Info {
        store: args.store.display().to_string(),
        format_version: meta.format_version,
        removal_step_dtype: dtype_name(crate::store::removal_step_dtype(meta)),
        rank_in_block_dtype: crate::store::rank_dtype(meta).map(dtype_name),
        method: match meta.method {
            crate::sis::Method::Exact => "exact".into(),
            crate::sis::Method::Gradient { .. } => "gradient".into(),
            crate::sis::Method::Screened { .. } => "screened".into(),
        },
        k: meta.k(),
        screen: match meta.method {
            crate::sis::Method::Screened { screen } => Some(screen),
            _ => None,
        },
        steps: meta.steps(),
        height: meta.height,
        width: meta.width,
        objective: meta.objective.to_string(),
        precision: meta.precision.clone(),
        thresholds: meta.thresholds.clone(),
        images,
        num_images: meta.num_images,
        complete: images as u64 == meta.num_images,
        segments,
        segment_bytes: bytes,
        bytes_per_image: (images > 0).then(|| bytes as f64 / images as f64),
        model: meta.model.clone(),
        model_sha256: meta.model_sha256.clone(),
        dataset: meta.dataset.clone(),
        dataset_sha256: meta.dataset_sha256.clone(),
        split: meta.split.clone(),
        seed: meta.seed,
        created_by: meta.created_by.clone(),
        torn_manifest_bytes: reader.torn_manifest_bytes(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let rows = table(&info);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
    Ok(())
}

fn table(i: &Info) -> Vec<(&'static str, String)> {
    let format_note = if i.format_version == 1 {
        " (old: objective confidence, no in-block ranks; read-only)"
    } else {
        ""
    };
    let mut method = i.method.clone();
    if i.method == "gradient" {
        method.push_str(&format!(" k={}", i.k));
    }
    if let Some(m) = i.screen {
        method.push_str(&format!(" M={m}"));
    }
    let mut rows = vec![
        ("store", i.store.clone()),
        (
            "format",
            format!(
                "{}{format_note}; this build reads {READABLE_VERSIONS:?}",
                i.format_version
            ),
        ),
        (
            "method",
            format!(
                "{method}, {} steps over {}x{} pixels",
                i.steps, i.height, i.width
            ),
        ),
        ("objective", i.objective.clone()),
        ("precision", i.precision.clone()),
        ("thresholds", format!("{:?}", i.thresholds)),
        (
            "images",
            format!(
                "{} of {} ({})",
                i.images,
                i.num_images,
                if i.complete { "complete" } else { "incomplete" }
            ),
        ),
        (
            "segments",
            format!(
                "{} files, {} bytes{}",
                i.segments,
                i.segment_bytes,
                i.bytes_per_image
                    .map(|b| format!(", {b:.0} bytes per image"))
                    .unwrap_or_default()
            ),
        ),
        (
            "tensors",
            format!(
                "removal_step {}{}",
                i.removal_step_dtype,
                i.rank_in_block_dtype
                    .map(|d| format!(", rank_in_block {d}"))
                    .unwrap_or_default()
            ),
        ),
        ("model", format!("{} (sha256 {})", i.model, i.model_sha256)),
        (
            "dataset",
            format!(
                "{} split {} (sha256 {})",
                i.dataset, i.split, i.dataset_sha256
            ),
        ),
        ("seed", i.seed.to_string()),
    ];
    if let Some(p) = &i.created_by {
        rows.push((
            "created by",
            format!(
                "overinterp {}, libtorch {}, on {} ({})",
                p.overinterp,
                p.libtorch,
                if p.cpu.is_empty() {
                    "unknown CPU"
                } else {
                    &p.cpu
                },
                p.cpu_features.join(" ")
            ),
        ));
    }
    if i.torn_manifest_bytes > 0 {
        rows.push((
            "torn tail",
            format!(
                "{} bytes of an unacknowledged manifest line (ignored)",
                i.torn_manifest_bytes
            ),
        ));
    }
    rows
}
