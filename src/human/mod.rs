//! The human classification benchmark (paper §3.4, §4.3, S4): people classify
//! backselect pixel subsets in a browser, and their accuracy is reported beside the
//! models'.
//!
//! # Layout
//!
//! - [`classes`]: class names shown on the answer buttons (Fashion-MNIST, MNIST, CIFAR-10).
//! - [`manifest`]: `study.json`, every choice a study build made (never sent to a browser).
//! - [`select`]: which images a study shows — per class, correct and confident, spread
//!   over the stores.
//! - [`render`]: a subset as a PNG (masked pixels at the masking value, nearest-neighbour
//!   upscaled).
//! - [`build`]: `overinterp human build`: stores + dataset (+ models) → a study directory.
//! - [`sequence`]: a participant's image order (batches of increasing fraction, shuffled
//!   within a batch by a per-participant seed).
//! - [`db`]: the answer log in SQLite (WAL, `synchronous=FULL`): durable before the next
//!   image is shown.
//! - [`pages`]: the HTML participants and the study owner see.
//! - [`server`]: `overinterp human serve`: the axum router, admin token, limits.
//! - [`analysis`]: accuracies per participant and fraction, the least-squares fit,
//!   confusion matrix, per-model breakdown, response times, models beside humans.
//! - [`figure`]: the Figure S7 analog (accuracy vs. kept fraction, least-squares line).
//! - [`report`]: `overinterp human report`: markdown/HTML/JSON and the Figure S7 analog;
//!   also the section the pipeline report appends.
//!
//! # A study directory
//!
//! ```text
//! STUDY/
//!   study.json          the manifest: images, labels, stores' hashes, models' predictions
//!   consent.txt         the consent line shown before starting (edit freely)
//!   images/<id>.png     one PNG per (image, fraction); <id> is an opaque random name
//!   responses.sqlite    answers (created by `serve`)
//!   admin-token         the admin token (mode 0600, created by `serve`)
//!   report/             written by `report`
//! ```

pub mod analysis;
pub mod build;
pub mod classes;
pub mod db;
pub mod figure;
pub mod manifest;
pub mod pages;
pub mod render;
pub mod report;
pub mod select;
pub mod sequence;
pub mod server;

use std::path::PathBuf;

pub use build::{build_study, BuildOptions};
pub use manifest::StudyManifest;

/// Errors of the human study. Each names the file, store, option or participant at fault.
#[derive(Debug, thiserror::Error)]
pub enum HumanError {
    /// An I/O call failed on a study file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A study file that does not parse or does not fit the study.
    #[error("{}: {reason}", .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A bad option or input, with what to do about it.
    #[error("{0}")]
    Invalid(String),
    /// A store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The dataset could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A model could not be loaded or run.
    #[error("{0}")]
    Model(String),
    /// The answer database failed.
    #[error("{}: {source}", .path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
}

impl HumanError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HumanError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `len` random bytes from the operating system (tokens, participant codes, image names).
pub(crate) fn os_random(len: usize) -> Result<Vec<u8>, HumanError> {
    use std::io::Read;
    let path = "/dev/urandom";
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| HumanError::io(path, e))?;
    Ok(buf)
}
