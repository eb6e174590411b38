//! # overinterp
//!
//! Finds where image classifiers overinterpret their input (Carter et al., NeurIPS
//! 2021): Sufficient Input Subsets for whole datasets, pixel-subset datasets built
//! from them, retraining and evaluation, at cluster scale.
//!
//! # Layout
//!
//! - [`cli`]: the `overinterp` command line (thin `main.rs` calls [`cli::run`]).
//! - [`data`]: dataset readers (CIFAR-10, CIFAR-10-C, IDX/Fashion-MNIST, ImageNet) and normalization.
//! - [`exec`]: the cluster's `Executor` (SIS on a worker) and `ResultSink` (the store on the leader).
//! - [`human`]: the human classification benchmark: study build, web server, report.
//! - [`job`]: a SIS job (model, data, method, store) shared by local and cluster runs.
//! - [`models`]: the paper's architectures, TorchScript import, ensembles, input dropout.
//! - [`train`]: training loop, schedules, augmentation, checkpoints, evaluation.
//! - [`pipeline`]: the paper's experiment as cached stages; analyses and the report.
//! - [`sis`]: exact and batched-gradient BackSelect, FindSIS, SIS collections.
//! - [`store`]: the append-only, indexed, Python-readable SIS result store.
//! - [`subsets`]: backselect top-q and random-q pixel subsets, mask sources, export.
//! - [`util`]: device parsing, seeded RNG, hashing, progress reporting.

pub mod cli;
pub mod data;
pub mod exec;
pub mod human;
pub mod job;
pub mod models;
pub mod pipeline;
pub mod sis;
pub mod store;
pub mod subsets;
pub mod train;
pub mod util;
