//! `overinterp human build`: result stores + their dataset (+ optionally the models)
//! → a study directory: the images chosen as the paper did, one PNG per (image,
//! fraction), what every model predicts on each, and the manifest recording it all.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::data::{self, DatasetSpec, ImageSource, Split};
use crate::store::{StoreMeta, StoreReader};

use super::manifest::{
    self, StudyImage, StudyManifest, StudyModel, StudyStore, Trial, CONSENT_FILE, IMAGES_DIR,
    MANIFEST_FILE,
};
use super::select::{self, Chosen};
use super::{classes, render, HumanError};

/// The consent line a new study starts with; the owner edits `consent.txt`.
pub const DEFAULT_CONSENT: &str = "Taking part is voluntary. We record only the code shown to \
you, your answers and how long each took; nothing else about you. You may stop at any time.";

/// Longer side of the trial PNGs in pixels (before the browser scales them).
pub const TARGET_SIDE: u32 = 280;

/// What `human build` was asked for, validated by the CLI.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Result stores whose subsets the study shows (one per model).
    pub stores: Vec<PathBuf>,
    /// The dataset the stores were computed on, and its `--data` text.
    pub data: DatasetSpec,
    pub data_text: String,
    /// Kept fractions; sorted ascending here.
    pub fractions: Vec<f64>,
    pub per_class: usize,
    pub min_confidence: f32,
    pub seed: u64,
    /// Classes shown and offered (default: all).
    pub classes: Option<Vec<i64>>,
    /// Class names (default: the dataset's published names).
    pub class_names: Option<Vec<String>>,
    /// Models to evaluate on every trial image (`--models`).
    pub models: Vec<String>,
    pub device: Device,
    /// The new study directory.
    pub out: PathBuf,
}

/// Builds the study; returns its manifest.
pub fn build_study(opts: &BuildOptions) -> Result<StudyManifest, HumanError> {
    let fractions = check_options(opts)?;
    prepare_out(&opts.out)?;
    let readers = opts
        .stores
        .iter()
        .map(StoreReader::open)
        .collect::<Result<Vec<_>, _>>()?;
    let meta = common_meta(&opts.stores, &readers)?;
    let split: Split = meta.split.parse()?;
    let source = data::open_dataset(&opts.data, split)?;
    if source.name() != meta.dataset || source.content_hash() != meta.dataset_sha256 {
        return Err(HumanError::Invalid(format!(
            "--data {} ({} split) is {} with hash {}, but the stores were computed on {} \
             with hash {}; pass the same --data (with the same ?limit) the stores used",
            opts.data_text,
            split,
            source.name(),
            source.content_hash(),
            meta.dataset,
            meta.dataset_sha256
        )));
    }
    let class_names = class_names(opts, source.as_ref(), &meta)?;
    let classes = study_classes(opts, class_names.len())?;

    let store_names: Vec<String> = opts
        .stores
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut candidates = Vec::new();
    let mut stores = Vec::new();
    for (path, reader) in opts.stores.iter().zip(&readers) {
        let cands = select::candidates(reader, opts.min_confidence)?;
        let mut qualifying = vec![0; class_names.len()];
        for c in &cands {
            if let Some(q) = qualifying.get_mut(c.label as usize) {
                *q += 1;
            }
        }
        stores.push(StudyStore {
            path: path.clone(),
            model: reader.meta().model.clone(),
            model_sha256: reader.meta().model_sha256.clone(),
            meta_sha256: file_sha256(&path.join(crate::store::META_FILE))?,
            manifest_sha256: file_sha256(&path.join(crate::store::MANIFEST_FILE))?,
            records: reader.len(),
            qualifying,
        });
        candidates.push(cands);
    }
    let chosen = select::choose(
        &candidates,
        &classes,
        opts.per_class,
        opts.seed,
        &store_names,
        |c| class_names[c as usize].clone(),
        opts.min_confidence,
    )?;

    let models = load_models(opts, source.as_ref(), &stores)?;
    let scale = render::scale_for(meta.height, meta.width, TARGET_SIDE);
    let images = render_and_predict(
        opts,
        &readers,
        source.as_ref(),
        &chosen,
        &fractions,
        scale,
        &models,
    )?;
    let manifest = StudyManifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        dataset: meta.dataset.clone(),
        dataset_sha256: meta.dataset_sha256.clone(),
        data: opts.data_text.clone(),
        class_names,
        classes,
        fractions,
        per_class: opts.per_class,
        min_confidence: opts.min_confidence,
        seed: opts.seed,
        height: meta.height,
        width: meta.width,
        scale,
        stores,
        models: models.into_iter().map(|(m, _)| m).collect(),
        images,
    };
    manifest.validate().map_err(HumanError::Invalid)?;
    let consent = opts.out.join(CONSENT_FILE);
    if !consent.exists() {
        manifest::write_synced(&consent, format!("{DEFAULT_CONSENT}\n").as_bytes())?;
    }
    manifest.save(&opts.out)?;
    Ok(manifest)
}

/// Checks the numbers; returns the fractions sorted ascending.
fn check_options(opts: &BuildOptions) -> Result<Vec<f64>, HumanError> {
    let mut fractions = opts.fractions.clone();
    if let Some(q) = fractions.iter().find(|q| !(**q > 0.0 && **q <= 1.0)) {
        return Err(HumanError::Invalid(format!(
            "--fractions: {q} is not in (0, 1]"
        )));
    }
    fractions.sort_by(f64::total_cmp);
    fractions.dedup();
    if fractions.is_empty() {
        return Err(HumanError::Invalid("--fractions names no fraction".into()));
    }
    if opts.per_class == 0 {
        return Err(HumanError::Invalid("--per-class must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&opts.min_confidence) {
        return Err(HumanError::Invalid(format!(
            "--min-confidence {} is not in [0, 1]",
            opts.min_confidence
        )));
    }
    if opts.stores.is_empty() {
        return Err(HumanError::Invalid("--stores names no store".into()));
    }
    Ok(fractions)
}

/// Creates the output directory; refuses one that already holds a study (its
/// answers would no longer match).
fn prepare_out(out: &Path) -> Result<(), HumanError> {
    if out.join(MANIFEST_FILE).exists() {
        return Err(HumanError::Invalid(format!(
            "{} already holds a study ({MANIFEST_FILE}); rebuilding it would orphan its \
             answers. Choose a new --out",
            out.display()
        )));
    }
    let images = out.join(IMAGES_DIR);
    std::fs::create_dir_all(&images).map_err(|e| HumanError::io(&images, e))
}

/// All stores must hold the same dataset split at the same image size.
fn common_meta(paths: &[PathBuf], readers: &[StoreReader]) -> Result<StoreMeta, HumanError> {
    let first = readers[0].meta().clone();
    for (path, r) in paths.iter().zip(readers).skip(1) {
        let m = r.meta();
        if (
            m.dataset.as_str(),
            m.dataset_sha256.as_str(),
            m.height,
            m.width,
        ) != (
            first.dataset.as_str(),
            first.dataset_sha256.as_str(),
            first.height,
            first.width,
        ) {
            return Err(HumanError::Invalid(format!(
                "store {} holds {} ({}×{}, hash {}), but {} holds {} ({}×{}, hash {}); a \
                 study shows one dataset split",
                path.display(),
                m.dataset,
                m.height,
                m.width,
                m.dataset_sha256,
                paths[0].display(),
                first.dataset,
                first.height,
                first.width,
                first.dataset_sha256
            )));
        }
    }
    Ok(first)
}

fn class_names(
    opts: &BuildOptions,
    source: &dyn ImageSource,
    meta: &StoreMeta,
) -> Result<Vec<String>, HumanError> {
    let n = source.num_classes();
    match &opts.class_names {
        Some(names) if names.len() == n => Ok(names.clone()),
        Some(names) => Err(HumanError::Invalid(format!(
            "--class-names gives {} names, {} has {n} classes",
            names.len(),
            meta.dataset
        ))),
        None => classes::known_class_names(&meta.dataset, n).ok_or_else(|| {
            HumanError::Invalid(format!(
                "no class names known for {}; give them with --class-names FILE (one per line)",
                meta.dataset
            ))
        }),
    }
}

fn study_classes(opts: &BuildOptions, n: usize) -> Result<Vec<i64>, HumanError> {
    let mut classes = opts
        .classes
        .clone()
        .unwrap_or_else(|| (0..n as i64).collect());
    if let Some(c) = classes.iter().find(|&&c| c < 0 || c as usize >= n) {
        return Err(HumanError::Invalid(format!(
            "--classes: {c} is not a class of the dataset (0..{n})"
        )));
    }
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        return Err(HumanError::Invalid(
            "--classes: a study needs at least 2 classes".into(),
        ));
    }
    Ok(classes)
}

fn file_sha256(path: &Path) -> Result<String, HumanError> {
    let bytes = std::fs::read(path).map_err(|e| HumanError::io(path, e))?;
    Ok(crate::util::sha256_hex(&bytes))
}

type Loaded = (StudyModel, Box<dyn crate::models::Classifier>);

/// Loads `--models` and ties each to the store its content hash matches.
fn load_models(
    opts: &BuildOptions,
    source: &dyn ImageSource,
    stores: &[StudyStore],
) -> Result<Vec<Loaded>, HumanError> {
    let [c, h, w] = source.shape();
    opts.models
        .iter()
        .map(|spec| {
            let fail = |e: String| HumanError::Model(format!("--models {spec}: {e}"));
            let sha = crate::job::model_fingerprint(spec).map_err(|e| fail(format!("{e:#}")))?;
            let mut model =
                crate::models::load_model(spec, opts.device, [c as i64, h as i64, w as i64])
                    .map_err(|e| fail(e.to_string()))?;
            model.freeze();
            let study = StudyModel {
                spec: spec.clone(),
                describe: model.describe(),
                store: stores.iter().position(|s| s.model_sha256 == sha),
                model_sha256: sha,
            };
            Ok((study, model))
        })
        .collect()
}

/// Writes every trial's PNG and records every model's prediction on it.
fn render_and_predict(
    opts: &BuildOptions,
    readers: &[StoreReader],
    source: &dyn ImageSource,
    chosen: &[Chosen],
    fractions: &[f64],
    scale: u32,
    models: &[Loaded],
) -> Result<Vec<StudyImage>, HumanError> {
    let shape = source.shape();
    let image_bytes = shape.iter().product::<usize>();
    let indices: Vec<usize> = chosen.iter().map(|c| c.candidate.index as usize).collect();
    let mut pixels = vec![0u8; indices.len() * image_bytes];
    source.read_pixels(&indices, &mut pixels)?;
    let masked = render::mask_value(&source.normalization());
    let mut images = Vec::with_capacity(chosen.len());
    // kept[f][i]: image i's backselect subset at fraction f.
    let mut kept: Vec<Vec<Vec<u32>>> = vec![Vec::with_capacity(chosen.len()); fractions.len()];
    for (i, c) in chosen.iter().enumerate() {
        let chw = &pixels[i * image_bytes..(i + 1) * image_bytes];
        let mut trials = Vec::with_capacity(fractions.len());
        for (f, &q) in fractions.iter().enumerate() {
            let subset = readers[c.store].top_fraction_pixels(c.candidate.index, q)?;
            let rgb = render::subset_rgb(chw, shape, &subset, &masked, scale as usize)?;
            let png =
                render::encode_png(shape[2] * scale as usize, shape[1] * scale as usize, &rgb)?;
            let id = hex::encode(super::os_random(8)?);
            let path = opts.out.join(IMAGES_DIR).join(format!("{id}.png"));
            manifest::write_synced(&path, &png)?;
            trials.push(Trial {
                id,
                kept_pixels: subset.len(),
                predictions: Vec::new(),
            });
            kept[f].push(subset);
        }
        images.push(StudyImage {
            index: c.candidate.index,
            label: c.candidate.label,
            store: c.store,
            confidence: c.candidate.confidence,
            trials,
        });
    }
    for (_, model) in models {
        for (f, kept) in kept.iter().enumerate() {
            let preds = predict_masked(model.as_ref(), source, &indices, kept, opts.device)?;
            for (image, p) in images.iter_mut().zip(preds) {
                image.trials[f].predictions.push(p);
            }
        }
    }
    Ok(images)
}

/// The model's predicted class on each image with only `kept[i]` visible (masked
/// pixels 0 after normalization, as everywhere else).
fn predict_masked(
    model: &dyn crate::models::Classifier,
    source: &dyn ImageSource,
    indices: &[usize],
    kept: &[Vec<u32>],
    device: Device,
) -> Result<Vec<i64>, HumanError> {
    let [_, h, w] = source.shape();
    let torch = |e: tch::TchError| HumanError::Model(format!("{}: {e}", model.describe()));
    let _guard = tch::no_grad_guard();
    let mut out = Vec::with_capacity(indices.len());
    for (chunk, kept) in indices.chunks(128).zip(kept.chunks(128)) {
        let (x, _) = data::batch(source, chunk, device)?;
        let mut mask = vec![0f32; chunk.len() * h * w];
        for (i, k) in kept.iter().enumerate() {
            for &q in k {
                mask[i * h * w + q as usize] = 1.0;
            }
        }
        let mask = Tensor::from_slice(&mask)
            .f_view([chunk.len() as i64, 1, h as i64, w as i64])
            .and_then(|m| m.f_to_device(device))
            .map_err(torch)?;
        let logits = model
            .forward(&(x * mask), false)
            .map_err(|e| HumanError::Model(format!("{}: {e}", model.describe())))?;
        let pred = logits
            .f_argmax(-1, false)
            .and_then(|p| p.f_to_kind(Kind::Int64))
            .map_err(torch)?;
        out.extend(Vec::<i64>::try_from(&pred).map_err(torch)?);
    }
    Ok(out)
}
