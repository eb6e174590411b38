//! The synthetic dataset with a planted shortcut, written in the real MNIST IDX
//! format, and a small pipeline spec over it: each class lights up its own three
//! pixels on a noisy background, so those pixels alone decide the label.

use std::path::{Path, PathBuf};

pub const SIDE: usize = 28;
pub const CLASSES: usize = 10;

/// The planted pixels of class `y`: three pixels on row `2 + 2y`, columns 3, 12, 21.
pub fn planted(y: usize) -> [usize; 3] {
    let row = 2 + 2 * y;
    [row * SIDE + 3, row * SIDE + 12, row * SIDE + 21]
}

/// Writes `{train,t10k}-{images-idx3,labels-idx1}-ubyte` with `n` images each.
pub fn write_idx(dir: &Path, prefix: &str, n: usize, seed: u64) {
    write_images(dir, prefix, n, seed, false);
}

/// Writes a corrupted test set `t10k-*` of `n` images: in about 2 of 5 images the
/// planted pixels of the next class instead of the label's, so the model gets those
/// wrong, confidently (a corrupted set with SIS of both correct and wrong predictions).
pub fn write_corrupted_idx(dir: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    write_images(dir, "t10k", n, seed, true);
}

/// Writes a corrupted test set of 100 images into `dir/corrupted` and names it in
/// `dir/spec.toml` (the role CIFAR-10-C plays: Table 1's corrupted column, the
/// corrupted set's SIS stage and Figure S3).
pub fn add_corrupted(dir: &Path) {
    let corrupted = dir.join("corrupted");
    write_corrupted_idx(&corrupted, 100, 3);
    name_corrupted(dir, &corrupted);
}

/// Names the MNIST-format directory `corrupted` as the corrupted set in `dir/spec.toml`.
pub fn name_corrupted(dir: &Path, corrupted: &Path) {
    let spec = dir.join("spec.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let anchor = "local_workers = 2\n";
    assert!(text.contains(anchor), "no `{anchor}` in the spec");
    let line = format!("corrupted = \"mnist:{}\"\n", corrupted.display());
    std::fs::write(&spec, text.replacen(anchor, &format!("{anchor}{line}"), 1)).unwrap();
}

/// The images and labels of [`write_idx`]; with `swap`, one extra draw per image
/// picks whether it shows the next class's planted pixels.
fn write_images(dir: &Path, prefix: &str, n: usize, seed: u64, swap: bool) {
    let mut rng = overinterp::util::SplitMix64::new(seed);
    let mut images = vec![0, 0, 8, 3];
    images.extend((n as u32).to_be_bytes());
    images.extend((SIDE as u32).to_be_bytes());
    images.extend((SIDE as u32).to_be_bytes());
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for _ in 0..n {
        let y = rng.below(CLASSES);
        let shown = if swap && rng.below(5) < 2 {
            (y + 1) % CLASSES
        } else {
            y
        };
        let mut img: Vec<u8> = (0..SIDE * SIDE).map(|_| rng.below(120) as u8).collect();
        for p in planted(shown) {
            img[p] = 255;
        }
        images.extend(img);
        labels.push(y as u8);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// The pipeline spec of the planted-shortcut experiment over `data`, into `out`,
/// with `extra` TOML appended (e.g. a `[slurm]` table).
pub fn spec(data: &Path, out: &Path, extra: &str) -> String {
    format!(
        r#"
name = "planted shortcut"
data = "mnist:{data}"
out = "{out}"
local_workers = 2
fraction = 0.01
replicates = 2
threshold = 0.9
sweep = [0.5, 0.9]

[[models]]
name = "cnn"
arch = "small-cnn"

[train]
epochs = 2
batch_size = 64
schedule = {{ lr = 0.05, milestones = [], gamma = 0.2 }}
momentum = 0.9
nesterov = true
weight_decay = 5e-4
augment = false
crop_padding = 0
seed = 0

[retrain]
epochs = 3
batch_size = 64
schedule = {{ lr = 0.05, milestones = [], gamma = 0.2 }}
momentum = 0.9
nesterov = true
weight_decay = 5e-4
augment = false
crop_padding = 0
seed = 0

[sis]
method = {{ kind = "gradient", k = 8 }}
thresholds = [0.9]
batch_size = 32
candidate_batch = 256
seed = 0
collection = false
{extra}"#,
        data = data.display(),
        out = out.display()
    )
}

/// A temp dir with the dataset (600 training and 200 test images) in `data/` and
/// `spec.toml` (output `out/`, `extra` appended); returns the dir and the data path.
pub fn fixture(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, "train", 600, 1);
    write_idx(&data, "t10k", 200, 2);
    std::fs::write(
        dir.path().join("spec.toml"),
        spec(&data, &dir.path().join("out"), extra),
    )
    .unwrap();
    (dir, data)
}
