//! `overinterp subsets` and `overinterp export`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::common::DataArgs;
use crate::data::Split;
use crate::store::StoreReader;
use crate::subsets::{export, open_masks, Selection, StoredSubsets};

/// Turn a SIS result store into a pixel-subset dataset that `train --masks DIR` and
/// `eval --masks DIR` read: the backselect top-q subset of every image (the last
/// ⌈q·p⌉ pixels BackSelect removed; the paper keeps 5% on CIFAR-10, 10% on ImageNet)
/// or its SIS at a threshold. No model is needed. Random baselines need no file:
/// pass `--masks random:Q[:SEED]` to train/eval directly.
///
/// Examples:
///   overinterp subsets --store stores/r20-train --fraction 0.05 --out subsets/bs5-train
///   overinterp subsets --store stores/r20-test --threshold 0.99 --out subsets/sis99-test
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SubsetsArgs {
    /// The SIS result store.
    #[arg(long)]
    pub store: PathBuf,
    /// Keep the backselect top fraction q of pixels.
    #[arg(long, conflicts_with = "threshold")]
    pub fraction: Option<f64>,
    /// Keep the first SIS at this threshold instead.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Output directory (subset.json + kept.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_subsets(args: SubsetsArgs) -> anyhow::Result<()> {
    let selection = match (args.fraction, args.threshold) {
        (Some(q), None) => Selection::BackselectTop(q),
        (None, Some(t)) => Selection::Sis(t),
        _ => bail!("give --fraction Q (backselect top-q) or --threshold T (SIS)"),
    };
    let store = StoreReader::open(&args.store)
        .with_context(|| format!("--store {}", args.store.display()))?;
    let subsets = StoredSubsets::from_store(&store, selection)?;
    let counts = subsets.save(&args.out)?;
    println!(
        "{} images, mean {:.1} pixels kept ({} with none); written to {}",
        counts.images,
        counts.pixels_kept as f64 / counts.images.max(1) as f64,
        counts.images_with_none,
        args.out.display()
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// numpy .npz: indices, labels, masks [N,H,W], images [N,C,H,W] (masked at the mean).
    Npz,
    /// CIFAR-10 binary records (label byte + 3072 CHW bytes), masked pixels at the mean.
    CifarBin,
    /// A PNG gallery: original | SIS location | SIS image, one row per image.
    Png,
}

/// Export pixel-subset images for other tools.
///
/// Examples:
///   overinterp export --masks subsets/bs5-train --data cifar10:data/cifar-10-batches-bin \
///       --split train --format cifar-bin --out bs5_train.bin
///   overinterp export --masks sis:stores/r20-test:0.99 --data cifar10:data/cifar-10-batches-bin \
///       --format png --count 8 --out sis-gallery.png
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ExportArgs {
    /// Which pixels to keep: a subset dataset DIR, backselect:STORE:Q, sis:STORE:TAU or random:Q[:SEED].
    #[arg(long)]
    pub masks: String,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, value_enum)]
    pub format: Format,
    /// Images to export (default: all; PNG: 8).
    #[arg(long)]
    pub count: Option<usize>,
    /// First image index.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// PNG upscaling factor.
    #[arg(long, default_value_t = 4)]
    pub scale: usize,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let split: Split = args.split.parse()?;
    let source = args.data.open(split)?;
    let [_, h, w] = source.shape();
    let masks = open_masks(&args.masks, (h, w))?;
    let default_count = match args.format {
        Format::Png => 8,
        _ => source.len(),
    };
    let end = (args.start + args.count.unwrap_or(default_count)).min(source.len());
    let indices: Vec<usize> = (args.start..end).collect();
    let kept = |i: usize| -> Result<Vec<u32>, crate::subsets::SubsetError> {
        let m = masks.masks(&[i])?.flatten(0, -1);
        Ok(Vec::<i64>::try_from(m.nonzero().flatten(0, -1))?
            .into_iter()
            .map(|p| p as u32)
            .collect())
    };
    match args.format {
        Format::Npz => export::export_npz(source.as_ref(), &kept, &indices, &args.out)?,
        Format::CifarBin => {
            export::export_cifar_binary(source.as_ref(), &kept, &indices, &args.out)?
        }
        Format::Png => export::export_png_gallery(
            source.as_ref(),
            &kept,
            None,
            &indices,
            args.scale,
            &args.out,
        )?,
    }
    println!(
        "exported {} image(s) ({}) to {}",
        indices.len(),
        masks.describe(),
        args.out.display()
    );
    Ok(())
}
