//! Dataset readers on fixture files written byte for byte in each real format.
//!
//! CIFAR-10, CIFAR-10-C and IDX fixtures are in `tests/fixtures/`, written by
//! `scripts/make-fixtures` with numpy (`np.save` for `.npy`, Python's gzip/struct
//! for IDX); the expected pixel values, labels and hashes quoted below are what that
//! script prints, read back by numpy — not by the code under test. JPEG fixtures are
//! encoded here, with the `jpeg-encoder` crate, from images whose expected decoded
//! content is known by construction. Malformed inputs are made by damaging copies of
//! the fixtures in temporary folders.

use std::path::{Path, PathBuf};

use overinterp::data::{
    batch, open_dataset, subset, BadFilePolicy, Cifar10, Cifar10c, Cifar10cOptions, DataError,
    DatasetSpec, Idx, IdxKind, ImageNet, ImageNetOptions, ImageSource, InMemory, Normalization,
    Split,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A temporary copy of a fixture folder, to damage.
fn copy_fixture(name: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(fixtures(name))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    Ok(dir)
}

/// Pixel `(c, y, x)` of image `index`.
fn pixel(source: &dyn ImageSource, index: usize, c: usize, y: usize, x: usize) -> Result<u8> {
    let [ch, h, w] = source.shape();
    let mut buf = vec![0u8; ch * h * w];
    source.read_pixels(&[index], &mut buf)?;
    Ok(buf[(c * h + y) * w + x])
}

fn labels(source: &dyn ImageSource) -> Result<Vec<i64>> {
    Ok((0..source.len())
        .map(|i| source.label(i))
        .collect::<std::result::Result<_, _>>()?)
}

fn err_string<T: std::fmt::Debug>(r: std::result::Result<T, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------- CIFAR-10

#[test]
fn cifar10_train_matches_numpy() -> Result {
    let d = Cifar10::open(fixtures("cifar10"), Split::Train)?;
    assert_eq!(
        (d.name(), d.len(), d.shape(), d.num_classes()),
        ("cifar10/train".into(), 10, [3, 32, 32], 10)
    );
    // scripts/make-fixtures: "cifar10 train labels [5, 1, 4, 7, 0, 1, 1, 5, 7, 6]"
    assert_eq!(labels(&d)?, vec![5, 1, 4, 7, 0, 1, 1, 5, 7, 6]);
    // "cifar10 train image 7 [c, y, x] (0,0,0) (1,5,9) (2,31,31): 144 191 204"
    // (image 7 is record 1 of data_batch_4.bin: records number on across files).
    assert_eq!(pixel(&d, 7, 0, 0, 0)?, 144);
    assert_eq!(pixel(&d, 7, 1, 5, 9)?, 191);
    assert_eq!(pixel(&d, 7, 2, 31, 31)?, 204);
    // hashlib.sha256(pixels.tobytes() + labels.astype('<i8').tobytes()).hexdigest()
    assert_eq!(
        d.content_hash(),
        "bae8663c0a603c1d57e0b31161c1a02840d631316f3c6e2f6d79b42164b3d9c1"
    );
    assert_eq!(d.normalization(), Normalization::cifar10());
    Ok(())
}

#[test]
fn cifar10_test_split_and_archive_folder() -> Result {
    // The folder holding `cifar-10-batches-bin` works too.
    let parent = tempfile::tempdir()?;
    let inner = parent.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&inner)?;
    std::fs::copy(
        fixtures("cifar10/test_batch.bin"),
        inner.join("test_batch.bin"),
    )?;
    let d = Cifar10::open(parent.path(), Split::Test)?;
    assert_eq!(labels(&d)?, vec![3, 9, 0]);
    // "cifar10 test image 2 (0,0,0), (2,31,31): 219 137"
    assert_eq!(
        (pixel(&d, 2, 0, 0, 0)?, pixel(&d, 2, 2, 31, 31)?),
        (219, 137)
    );
    Ok(())
}

#[test]
fn cifar10_missing_file() -> Result {
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        fixtures("cifar10/test_batch.bin"),
        dir.path().join("test_batch.bin"),
    )?;
    let e = err_string(Cifar10::open(dir.path(), Split::Train));
    let path = dir.path().join("data_batch_1.bin");
    assert_eq!(
        e,
        format!(
            "{}: file not found (a CIFAR-10 binary batch of 3073-byte records)",
            path.display()
        )
    );
    Ok(())
}

#[test]
fn cifar10_truncated_record() -> Result {
    let dir = copy_fixture("cifar10")?;
    let path = dir.path().join("test_batch.bin");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..2 * 3073 + 100])?;
    let e = err_string(Cifar10::open(dir.path(), Split::Test));
    assert_eq!(
        e,
        format!(
            "{}: record 2: truncated record: the file has 6246 bytes, 2 whole 3073-byte records and \
             100 bytes over (an interrupted download or the wrong file?)",
            path.display()
        )
    );
    Ok(())
}

#[test]
fn cifar10_label_out_of_range() -> Result {
    let dir = copy_fixture("cifar10")?;
    let path = dir.path().join("data_batch_3.bin");
    let mut bytes = std::fs::read(&path)?;
    bytes[3073] = 10; // label byte of record 1
    std::fs::write(&path, &bytes)?;
    let e = err_string(Cifar10::open(dir.path(), Split::Train));
    assert_eq!(
        e,
        format!(
            "{}: record 1: label 10 is not a CIFAR-10 class (0..=9)",
            path.display()
        )
    );
    Ok(())
}

// ---------------------------------------------------------------- batch, InMemory, subset

#[test]
fn batch_normalizes_per_channel() -> Result {
    // One 3×1×2 image: channel 0 = [0, 255], channel 1 = [128, 64], channel 2 = [10, 20].
    let img = vec![0u8, 255, 128, 64, 10, 20];
    let other = vec![1u8; 6];
    let d = InMemory::new(
        "synthetic",
        [3, 1, 2],
        4,
        Normalization::cifar10(),
        [other, img].concat(),
        vec![2, 3],
    )?;
    let (x, y) = batch(&d, &[1, 0], tch::Device::Cpu)?;
    assert_eq!(x.size(), vec![2, 3, 1, 2]);
    assert_eq!(Vec::<i64>::try_from(&y)?, vec![3, 2]);
    let got = Vec::<f32>::try_from(&x.get(0).flatten(0, -1))?;
    // By hand: (p/255 − m/255)/(s/255) = (p − m)/s with m = [125.3, 123.0, 113.9], s = [63.0, 62.1, 66.7]:
    // (0−125.3)/63 = −1.988889, (255−125.3)/63 = 2.058730, (128−123)/62.1 = 0.080515,
    // (64−123)/62.1 = −0.950081, (10−113.9)/66.7 = −1.557721, (20−113.9)/66.7 = −1.407796.
    let want = [
        -1.988889f64,
        2.058730,
        0.080515,
        -0.950081,
        -1.557721,
        -1.407796,
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    assert_eq!(
        err_string(batch(&d, &[2], tch::Device::Cpu)),
        "index 2 is out of range: the dataset has 2 images"
    );
    Ok(())
}

#[test]
fn in_memory_checks_its_input() {
    let n = Normalization::fashion_mnist();
    assert_eq!(
        err_string(InMemory::new(
            "s",
            [1, 2, 2],
            10,
            n.clone(),
            vec![0; 7],
            vec![0, 1]
        )),
        "s: 7 pixel bytes do not make 2 images of shape [1, 2, 2] (8 bytes)"
    );
    assert_eq!(
        err_string(InMemory::new(
            "s",
            [1, 2, 2],
            10,
            n.clone(),
            vec![0; 8],
            vec![0, 10]
        )),
        "s: image 1: label 10 is outside 0..10"
    );
    assert_eq!(
        err_string(InMemory::new("s", [3, 2, 2], 10, n, vec![0; 12], vec![0])),
        "s: normalization has 1 means and 1 stds for 3 channels"
    );
}

#[test]
fn subset_copies_the_chosen_images() -> Result {
    let d = Cifar10::open(fixtures("cifar10"), Split::Train)?;
    let s = subset(&d, &[7, 2, 7])?;
    assert_eq!((s.name(), s.len()), ("cifar10/train/subset3".into(), 3));
    assert_eq!(s.labels(), &[5, 4, 5]);
    assert_eq!(s.image(0)?, s.image(2)?);
    assert_eq!(
        (pixel(&s, 0, 1, 5, 9)?, pixel(&s, 2, 2, 31, 31)?),
        (191, 204)
    );
    assert_ne!(s.content_hash(), d.content_hash());
    assert_eq!(
        err_string(subset(&d, &[10])),
        "index 10 is out of range: the dataset has 10 images"
    );
    Ok(())
}

// ---------------------------------------------------------------- IDX

#[test]
fn fashion_mnist_gzipped_matches_numpy() -> Result {
    let d = Idx::open(
        fixtures("fashion-mnist"),
        Split::Train,
        IdxKind::FashionMnist,
    )?;
    assert_eq!(
        (d.name(), d.len(), d.shape()),
        ("fashion-mnist/train".into(), 6, [1, 28, 28])
    );
    // "fashion-mnist train labels [2, 1, 7, 2, 1, 9] image 1 (0,0) (13,14) (27,27): 67 241 206"
    assert_eq!(labels(&d)?, vec![2, 1, 7, 2, 1, 9]);
    assert_eq!(
        (
            pixel(&d, 1, 0, 0, 0)?,
            pixel(&d, 1, 0, 13, 14)?,
            pixel(&d, 1, 0, 27, 27)?
        ),
        (67, 241, 206)
    );
    assert_eq!(
        d.content_hash(),
        "7659f482012c48ef7b45f509d2bd53a8ccc07d2f736b3b351769a386898d7d62"
    );
    assert_eq!(
        d.normalization(),
        Normalization {
            mean: vec![0.2860],
            std: vec![0.3530]
        }
    );
    let t = Idx::open(
        fixtures("fashion-mnist"),
        Split::Test,
        IdxKind::FashionMnist,
    )?;
    // "fashion-mnist t10k labels [1, 6, 8, 6] image 1 (0,0) (13,14) (27,27): 232 116 61"
    assert_eq!(labels(&t)?, vec![1, 6, 8, 6]);
    assert_eq!(
        (
            pixel(&t, 1, 0, 0, 0)?,
            pixel(&t, 1, 0, 13, 14)?,
            pixel(&t, 1, 0, 27, 27)?
        ),
        (232, 116, 61)
    );
    Ok(())
}

#[test]
fn mnist_plain_matches_numpy() -> Result {
    let d = Idx::open(fixtures("mnist"), Split::Test, IdxKind::Mnist)?;
    assert_eq!((d.name(), d.len()), ("mnist/test".into(), 2));
    // "mnist t10k labels [9, 5] image 1 (0,0) (13,14) (27,27): 0 211 242"
    assert_eq!(labels(&d)?, vec![9, 5]);
    assert_eq!(
        (
            pixel(&d, 1, 0, 0, 0)?,
            pixel(&d, 1, 0, 13, 14)?,
            pixel(&d, 1, 0, 27, 27)?
        ),
        (0, 211, 242)
    );
    assert_eq!(
        d.content_hash(),
        "4d3c6ff569cecb52bd2c961b66eab5e7ea3b7f58a2e9c308db9a6045aab423ec"
    );
    assert_eq!(
        d.normalization(),
        Normalization {
            mean: vec![0.1307],
            std: vec![0.3081]
        }
    );
    Ok(())
}

#[test]
fn idx_missing_file() -> Result {
    let dir = tempfile::tempdir()?;
    let e = err_string(Idx::open(dir.path(), Split::Train, IdxKind::Mnist));
    assert_eq!(
        e,
        format!(
            "{}: file not found (IDX images file; also looked for train-images-idx3-ubyte.gz, \
             train-images.idx3-ubyte, train-images.idx3-ubyte.gz)",
            dir.path().join("train-images-idx3-ubyte").display()
        )
    );
    Ok(())
}

#[test]
fn idx_wrong_magic_plain_and_gzipped() -> Result {
    let dir = copy_fixture("mnist")?;
    let path = dir.path().join("t10k-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&path)?;
    bytes[3] = 0x03;
    std::fs::write(&path, &bytes)?;
    let e = err_string(Idx::open(dir.path(), Split::Test, IdxKind::Mnist));
    assert_eq!(
        e,
        format!(
            "{}: wrong magic number 0x00000803, expected 0x00000801 (an IDX labels file)",
            path.display()
        )
    );

    // A gzipped images file that holds a labels header.
    let dir = copy_fixture("fashion-mnist")?;
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &[0, 0, 8, 1, 0, 0, 0, 6, 0, 0, 0, 28, 0, 0, 0, 28])?;
    std::fs::write(&path, gz.finish()?)?;
    let e = err_string(Idx::open(dir.path(), Split::Train, IdxKind::FashionMnist));
    assert_eq!(
        e,
        format!(
            "{}: wrong magic number 0x00000801, expected 0x00000803 (an IDX images file)",
            path.display()
        )
    );

    std::fs::write(&path, b"not gzip at all")?;
    let e = err_string(Idx::open(dir.path(), Split::Train, IdxKind::FashionMnist));
    assert!(
        e.starts_with(&format!("{}: cannot gunzip: ", path.display())),
        "{e}"
    );
    Ok(())
}

#[test]
fn idx_label_out_of_range_truncation_and_count_mismatch() -> Result {
    let dir = copy_fixture("mnist")?;
    let labels_path = dir.path().join("t10k-labels-idx1-ubyte");
    let images_path = dir.path().join("t10k-images-idx3-ubyte");
    let good = std::fs::read(&labels_path)?;
    let mut bad = good.clone();
    bad[8 + 1] = 10;
    std::fs::write(&labels_path, &bad)?;
    let e = err_string(Idx::open(dir.path(), Split::Test, IdxKind::Mnist));
    assert_eq!(
        e,
        format!(
            "{}: record 1: label 10 is out of range 0..10",
            labels_path.display()
        )
    );

    // Three labels for two images.
    std::fs::write(&labels_path, [0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])?;
    let e = err_string(Idx::open(dir.path(), Split::Test, IdxKind::Mnist));
    assert_eq!(
        e,
        format!(
            "{}: 3 labels, but {} holds 2 images",
            labels_path.display(),
            images_path.display()
        )
    );

    std::fs::write(&labels_path, &good)?;
    let images = std::fs::read(&images_path)?;
    std::fs::write(&images_path, &images[..images.len() - 100])?;
    let e = err_string(Idx::open(dir.path(), Split::Test, IdxKind::Mnist));
    assert_eq!(
        e,
        format!(
            "{}: record 1: truncated image: the header promises 2 images (1568 bytes), the file holds 1468 bytes",
            images_path.display()
        )
    );
    Ok(())
}

/// The real Fashion-MNIST, where Debian's `dataset-fashion-mnist` installed it
/// (scripts/setup installs it; the test says so and passes if it is absent).
#[test]
fn real_fashion_mnist_if_installed() -> Result {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("train-images-idx3-ubyte.gz").exists() {
        eprintln!(
            "skipped: {} is not installed (apt-get install dataset-fashion-mnist)",
            dir.display()
        );
        return Ok(());
    }
    let spec: DatasetSpec = "fashion-mnist".parse()?;
    let train = open_dataset(&spec, Split::Train)?;
    let test = open_dataset(&spec, Split::Test)?;
    assert_eq!(
        (train.len(), test.len(), train.shape()),
        (60000, 10000, [1, 28, 28])
    );
    // numpy on the same files: labels[:5] == [9 0 0 3 0], t10k [9 2 1 1 6], 6000 per class.
    assert_eq!(
        (0..5)
            .map(|i| train.label(i))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        vec![9, 0, 0, 3, 0]
    );
    assert_eq!(
        (0..5)
            .map(|i| test.label(i))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        vec![9, 2, 1, 1, 6]
    );
    let mut counts = [0usize; 10];
    for l in labels(train.as_ref())? {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [6000; 10]);
    // The normalization constants are the training set's statistics: numpy gives
    // mean 0.286041, std 0.353024 of pixels/255.
    let mut px = vec![0u8; 60000 * 784];
    train.read_pixels(&(0..60000).collect::<Vec<_>>(), &mut px)?;
    let n = px.len() as f64;
    let mean = px.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / n;
    let var = px
        .iter()
        .map(|&p| (p as f64 / 255.0 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(
        (mean - 0.286041).abs() < 1e-5 && (var.sqrt() - 0.353024).abs() < 1e-5,
        "{mean} {}",
        var.sqrt()
    );
    let norm = train.normalization();
    assert!(
        (norm.mean[0] as f64 - mean).abs() < 1e-4 && (norm.std[0] as f64 - var.sqrt()).abs() < 1e-4
    );
    Ok(())
}

// ---------------------------------------------------------------- CIFAR-10-C

#[test]
fn cifar10c_all_matches_numpy() -> Result {
    let d = Cifar10c::open(
        fixtures("cifar10c"),
        Split::Test,
        &Cifar10cOptions::default(),
    )?;
    // Standard order: snow comes before fog in the release's list.
    assert_eq!(d.corruptions(), &["snow".to_string(), "fog".to_string()]);
    assert_eq!(
        (d.len(), d.shape(), d.num_classes()),
        (2 * 5 * 4, [3, 32, 32], 10)
    );
    assert_eq!(d.name(), "cifar10c/snow+fog/s12345/every");
    assert_eq!(d.normalization(), Normalization::cifar10());
    // Index = (corruption·5 + severity−1)·4 + image. Fog, severity 3, image 1 = 29.
    assert_eq!(d.tag(29)?, ("fog", 3));
    assert_eq!(d.test_image(29)?, 1);
    assert_eq!(d.group(29).as_deref(), Some("fog/3"));
    // "cifar10c labels [1, 1, 7, 4, ...]" (the 4 test labels, repeated per severity)
    assert_eq!(d.label(29)?, 1);
    assert_eq!(d.label(3)?, 4);
    // "cifar10c fog s3 i1: CHW (0,0,0) (1,2,3) (2,31,30): 66 167 221" (numpy: fog[9, y, x, c])
    assert_eq!(
        (
            pixel(&d, 29, 0, 0, 0)?,
            pixel(&d, 29, 1, 2, 3)?,
            pixel(&d, 29, 2, 31, 30)?
        ),
        (66, 167, 221)
    );
    // "cifar10c snow s5 i3: CHW (0,0,0) (2,31,31): 227 245" — snow.npy is format 2.0.
    assert_eq!(d.tag(19)?, ("snow", 5));
    assert_eq!(
        (pixel(&d, 19, 0, 0, 0)?, pixel(&d, 19, 2, 31, 31)?),
        (227, 245)
    );
    Ok(())
}

#[test]
fn cifar10c_choice_and_seeded_sample() -> Result {
    let all = Cifar10c::open(
        fixtures("cifar10c"),
        Split::Test,
        &Cifar10cOptions::default(),
    )?;
    let opts = Cifar10cOptions {
        corruptions: vec!["fog".into()],
        severities: vec![3],
        ..Default::default()
    };
    let fog3 = Cifar10c::open(fixtures("cifar10c"), Split::Test, &opts)?;
    assert_eq!(fog3.len(), 4);
    assert_eq!(fog3.tag(1)?, ("fog", 3));
    assert_eq!(pixel(&fog3, 1, 1, 2, 3)?, 167);

    let opts = Cifar10cOptions {
        sample: Some(7),
        seed: 5,
        ..Default::default()
    };
    let s = Cifar10c::open(fixtures("cifar10c"), Split::Test, &opts)?;
    assert_eq!(s.len(), 7);
    assert_eq!(s.name(), "cifar10c/snow+fog/s12345/n7-seed5");
    let mut keys = Vec::new();
    let mut px = vec![0u8; 7 * 3072];
    s.read_pixels(&(0..7).collect::<Vec<_>>(), &mut px)?;
    for i in 0..7 {
        let (c, sev) = s.tag(i)?;
        let img = s.test_image(i)?;
        let c_index = all.corruptions().iter().position(|n| n == c).unwrap();
        let j = (c_index * 5 + sev as usize - 1) * 4 + img;
        // Each sampled image is the image its tag names, with its label.
        let mut want = vec![0u8; 3072];
        all.read_pixels(&[j], &mut want)?;
        assert_eq!(&px[i * 3072..(i + 1) * 3072], &want[..]);
        assert_eq!(s.label(i)?, all.label(j)?);
        keys.push(j);
    }
    keys.dedup();
    assert_eq!(keys.len(), 7, "sampled images are distinct and sorted");
    let again = Cifar10c::open(fixtures("cifar10c"), Split::Test, &opts)?;
    assert_eq!(again.content_hash(), s.content_hash());
    let other = Cifar10c::open(
        fixtures("cifar10c"),
        Split::Test,
        &Cifar10cOptions {
            seed: 6,
            ..opts.clone()
        },
    )?;
    assert_ne!(other.content_hash(), s.content_hash());

    let e = err_string(Cifar10c::open(
        fixtures("cifar10c"),
        Split::Test,
        &Cifar10cOptions {
            sample: Some(41),
            ..Default::default()
        },
    ));
    assert_eq!(
        e,
        "cannot sample 41 CIFAR-10-C images: the chosen corruptions and severities hold 40"
    );
    let e = err_string(Cifar10c::open(
        fixtures("cifar10c"),
        Split::Test,
        &Cifar10cOptions {
            severities: vec![6],
            ..Default::default()
        },
    ));
    assert_eq!(
        e,
        "CIFAR-10-C severity 6 does not exist: severities are 1 to 5"
    );
    let e = err_string(Cifar10c::open(
        fixtures("cifar10c"),
        Split::Train,
        &Cifar10cOptions::default(),
    ));
    assert_eq!(e, "CIFAR-10-C has only test images: use --split test");
    Ok(())
}

#[test]
fn cifar10c_missing_files() -> Result {
    let empty = tempfile::tempdir()?;
    let e = err_string(Cifar10c::open(
        empty.path(),
        Split::Test,
        &Cifar10cOptions::default(),
    ));
    assert_eq!(
        e,
        format!(
            "{}: file not found (no CIFAR-10-C corruption file (<corruption>.npy) in the folder)",
            empty.path().join("gaussian_noise.npy").display()
        )
    );
    let dir = copy_fixture("cifar10c")?;
    let opts = Cifar10cOptions {
        corruptions: vec!["frost".into()],
        ..Default::default()
    };
    let e = err_string(Cifar10c::open(dir.path(), Split::Test, &opts));
    assert_eq!(
        e,
        format!(
            "{}: file not found (a .npy array)",
            dir.path().join("frost.npy").display()
        )
    );
    std::fs::remove_file(dir.path().join("labels.npy"))?;
    let e = err_string(Cifar10c::open(
        dir.path(),
        Split::Test,
        &Cifar10cOptions::default(),
    ));
    assert_eq!(
        e,
        format!(
            "{}: file not found (a .npy array)",
            dir.path().join("labels.npy").display()
        )
    );
    Ok(())
}

#[test]
fn cifar10c_malformed_npy() -> Result {
    let dir = copy_fixture("cifar10c")?;
    let fog = dir.path().join("fog.npy");
    let good = std::fs::read(&fog)?;
    let open = || Cifar10c::open(dir.path(), Split::Test, &Cifar10cOptions::default());

    let mut bad = good.clone();
    bad[..6].copy_from_slice(b"PK\x03\x04\x14\x00");
    std::fs::write(&fog, &bad)?;
    assert_eq!(
        err_string(open()),
        format!(
            "{}: not a .npy file: it does not start with the magic \\x93NUMPY",
            fog.display()
        )
    );

    std::fs::write(&fog, &good[..good.len() - 100])?;
    assert_eq!(
        err_string(open()),
        format!(
            "{}: truncated: the header promises shape [20, 32, 32, 3] (61440 data bytes), the file has \
             61340 bytes after the header",
            fog.display()
        )
    );
    std::fs::write(&fog, &good)?;

    // labels.npy: np.save of int64 (20,) has a 128-byte header; record 5 is at 128 + 5·8.
    let labels = dir.path().join("labels.npy");
    let mut l = std::fs::read(&labels)?;
    assert_eq!(l.len(), 128 + 20 * 8);
    l[128 + 5 * 8] = 12;
    std::fs::write(&labels, &l)?;
    assert_eq!(
        err_string(open()),
        format!(
            "{}: record 5: label 12 is not a CIFAR-10 class (0..=9)",
            labels.display()
        )
    );
    Ok(())
}

// ---------------------------------------------------------------- ImageNet

/// Encodes a JPEG (quality 100, no chroma subsampling, so 8×8 blocks of one colour
/// decode to that colour within rounding).
fn jpeg(w: u16, h: u16, kind: jpeg_encoder::ColorType, pixels: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 100);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
    enc.encode(pixels, w, h, kind)?;
    Ok(out)
}

/// 320×256 RGB: rows y < 24 green; below, columns x < 56 red, the rest blue. The
/// 224 crop of a 256-high image starts at row 16, column 48, so crop rows 0–7 are
/// green, and below them crop columns 0–7 red, the rest blue.
fn stripes() -> Result<Vec<u8>> {
    let (w, h) = (320usize, 256usize);
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            px.extend(if y < 24 {
                [0, 255, 0]
            } else if x < 56 {
                [255, 0, 0]
            } else {
                [0, 0, 255]
            });
        }
    }
    jpeg(w as u16, h as u16, jpeg_encoder::ColorType::Rgb, &px)
}

/// 256×384 grayscale: rows y < 88 value 30, the rest 200. Crop rows start at 80.
fn gray_bands() -> Result<Vec<u8>> {
    let px: Vec<u8> = (0..384)
        .flat_map(|y| [if y < 88 { 30u8 } else { 200 }; 256])
        .collect();
    jpeg(256, 384, jpeg_encoder::ColorType::Luma, &px)
}

/// 448×448 RGB with R = ⌊x/2⌋, G = 255 − ⌊x/2⌋, B = 128: resized to 256, pixel j
/// of the resized row samples source x = (j + 0.5)·1.75 − 0.5 (pixel-centre
/// convention of PIL/torchvision), and a linear ramp survives a normalized
/// symmetric filter, so crop column k (j = k + 16) has R ≈ ((k+16.5)·1.75 − 0.5)/2 − 0.25
/// (−0.25: the mean effect of the floor).
fn ramp() -> Result<Vec<u8>> {
    let mut px = Vec::with_capacity(448 * 448 * 3);
    for _y in 0..448 {
        for x in 0..448u32 {
            px.extend([(x / 2) as u8, 255 - (x / 2) as u8, 128]);
        }
    }
    jpeg(448, 448, jpeg_encoder::ColorType::Rgb, &px)
}

/// 64×64 CMYK, C = 0, M = Y = 255, K = 0: red.
fn cmyk_red() -> Result<Vec<u8>> {
    let px: Vec<u8> = (0..64 * 64).flat_map(|_| [0u8, 255, 255, 0]).collect();
    jpeg(64, 64, jpeg_encoder::ColorType::Cmyk, &px)
}

/// An ImageNet tree: `<root>/<split>/<wnid>/<file>` for each (split, wnid, file, bytes).
fn imagenet_tree(files: &[(&str, &str, &str, Vec<u8>)]) -> Result<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    for (split, wnid, name, bytes) in files {
        let dir = root.path().join(split).join(wnid);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(root)
}

fn close(got: u8, want: f64, tol: f64) -> bool {
    (got as f64 - want).abs() <= tol
}

#[test]
fn imagenet_decode_resize_crop() -> Result {
    let root = imagenet_tree(&[
        (
            "val",
            "n01440764",
            "ILSVRC2012_val_00000002.JPEG",
            stripes()?,
        ),
        (
            "val",
            "n01440764",
            "ILSVRC2012_val_00000001.JPEG",
            gray_bands()?,
        ),
        ("val", "n09999999", "ramp.jpeg", ramp()?),
        ("val", "n09999999", "cmyk.JPEG", cmyk_red()?),
        ("val", "n09999999", "notes.txt", b"not an image".to_vec()),
    ])?;
    let d = ImageNet::open(root.path(), Split::Test, ImageNetOptions::default())?;
    assert_eq!((d.len(), d.shape(), d.num_classes()), (4, [3, 224, 224], 2));
    assert_eq!(
        d.classes(),
        &["n01440764".to_string(), "n09999999".to_string()]
    );
    assert_eq!(d.name(), "imagenet/test/224");
    // Sorted by class, then file name: gray (…01), stripes (…02), cmyk, ramp.
    assert_eq!(labels(&d)?, vec![0, 0, 1, 1]);
    assert!(d
        .path(1)?
        .ends_with("n01440764/ILSVRC2012_val_00000002.JPEG"));

    let mut px = vec![0u8; 4 * 3 * 224 * 224];
    d.read_pixels(&[0, 1, 2, 3], &mut px)?;
    let at = |img: usize, c: usize, y: usize, x: usize| {
        px[img * 3 * 224 * 224 + (c * 224 + y) * 224 + x]
    };
    let rgb =
        |img: usize, y: usize, x: usize| [at(img, 0, y, x), at(img, 1, y, x), at(img, 2, y, x)];
    let near =
        |got: [u8; 3], want: [u8; 3]| got.iter().zip(want).all(|(&g, w)| close(g, w as f64, 3.0));

    // Grayscale → RGB, crop rows from 80: rows 0–7 are 30, row 8 on 200.
    for (y, v) in [(0, 30), (7, 30), (8, 200), (223, 200)] {
        assert!(
            near(rgb(0, y, 100), [v, v, v]),
            "gray row {y}: {:?}",
            rgb(0, y, 100)
        );
    }
    // Stripes: crop offset (16, 48) exactly.
    for (y, x, want) in [
        (0, 100, [0, 255, 0]),
        (7, 100, [0, 255, 0]),
        (8, 100, [0, 0, 255]),
        (100, 7, [255, 0, 0]),
        (100, 8, [0, 0, 255]),
        (223, 223, [0, 0, 255]),
    ] {
        assert!(
            near(rgb(1, y, x), want),
            "stripes ({y}, {x}): {:?}",
            rgb(1, y, x)
        );
    }
    // CMYK → RGB.
    assert!(
        near(rgb(2, 112, 112), [255, 0, 0]),
        "cmyk: {:?}",
        rgb(2, 112, 112)
    );
    // Antialiased resize 448 → 256 keeps the ramp's geometry.
    for k in [0usize, 50, 100, 200, 223] {
        let want_r = ((k as f64 + 16.5) * 1.75 - 0.5) / 2.0 - 0.25;
        let got = rgb(3, 112, k);
        assert!(
            close(got[0], want_r, 1.5),
            "ramp col {k}: R {} vs {want_r:.2}",
            got[0]
        );
        assert!(
            close(got[1], 255.0 - want_r, 1.5),
            "ramp col {k}: G {}",
            got[1]
        );
        assert!(close(got[2], 128.0, 1.5), "ramp col {k}: B {}", got[2]);
    }

    // Reading in another order, one by one, gives the same bytes (parallel reads are independent).
    let mut one = vec![0u8; 3 * 224 * 224];
    d.read_pixels(&[3], &mut one)?;
    assert_eq!(&one[..], &px[3 * 3 * 224 * 224..]);

    // 299 crop after a 342 resize: geometry holds, colours stay.
    let i = ImageNet::open(
        root.path(),
        Split::Test,
        ImageNetOptions {
            crop: 299,
            ..Default::default()
        },
    )?;
    assert_eq!((i.shape(), i.resize_side()), ([3, 299, 299], 342));
    let mut big = vec![0u8; 3 * 299 * 299];
    i.read_pixels(&[1], &mut big)?;
    let p = |c: usize, y: usize, x: usize| big[(c * 299 + y) * 299 + x];
    assert!(close(p(2, 200, 200), 255.0, 3.0) && close(p(0, 200, 200), 0.0, 3.0));
    Ok(())
}

#[test]
fn imagenet_bad_jpeg_fail_and_skip() -> Result {
    let good = stripes()?;
    let truncated = good[..200].to_vec();
    let root = imagenet_tree(&[
        ("train", "n01", "a.JPEG", good.clone()),
        ("train", "n01", "b.JPEG", b"this is not a JPEG".to_vec()),
        ("train", "n02", "c.JPEG", truncated),
    ])?;
    let bad_b = root.path().join("train/n01/b.JPEG");
    let bad_c = root.path().join("train/n02/c.JPEG");

    let fail = ImageNet::open(root.path(), Split::Train, ImageNetOptions::default())?;
    let mut px = vec![0u8; 3 * 224 * 224];
    fail.read_pixels(&[0], &mut px)?;
    let e = err_string(fail.read_pixels(&[1], &mut px));
    assert!(
        e.starts_with(&format!("{}: cannot decode JPEG: ", bad_b.display())),
        "{e}"
    );
    let e = err_string(fail.read_pixels(&[2], &mut px));
    assert!(
        e.starts_with(&format!("{}: cannot decode JPEG: ", bad_c.display())),
        "{e}"
    );

    let skip = ImageNet::open(
        root.path(),
        Split::Train,
        ImageNetOptions {
            bad_files: BadFilePolicy::Skip,
            crop: 224,
        },
    )?;
    let mut px = vec![0u8; 3 * 3 * 224 * 224];
    skip.read_pixels(&[0, 1, 2], &mut px)?;
    skip.read_pixels(&[1], &mut px[..3 * 224 * 224])?;
    let bad = skip.bad_files();
    assert_eq!(bad.len(), 2, "{bad:?}");
    let mut paths: Vec<_> = bad.iter().map(|b| (b.index, b.path.clone())).collect();
    paths.sort();
    assert_eq!(paths, vec![(Some(1), bad_b), (Some(2), bad_c)]);
    assert!(bad
        .iter()
        .all(|b| b.problem.starts_with("cannot decode JPEG: ")));
    // A skipped image reads as the ImageNet mean, round(255·[0.485, 0.456, 0.406]) = [124, 116, 104],
    // so it normalizes to (nearly) zero: the fully masked input.
    let plane = 224 * 224;
    let img2 = &px[2 * 3 * plane..];
    assert!(img2[..plane].iter().all(|&v| v == 124));
    assert!(img2[plane..2 * plane].iter().all(|&v| v == 116));
    assert!(img2[2 * plane..3 * plane].iter().all(|&v| v == 104));
    Ok(())
}

#[test]
fn imagenet_empty_file_under_both_policies() -> Result {
    let root = imagenet_tree(&[
        ("val", "n01", "a.JPEG", stripes()?),
        ("val", "n01", "empty.JPEG", Vec::new()),
        ("val", "n02", "b.JPEG", gray_bands()?),
    ])?;
    let empty = root.path().join("val/n01/empty.JPEG");
    let e = err_string(ImageNet::open(
        root.path(),
        Split::Test,
        ImageNetOptions::default(),
    ));
    assert_eq!(
        e,
        format!(
            "{}: empty file (use the skip policy to leave bad files out)",
            empty.display()
        )
    );
    let d = ImageNet::open(
        root.path(),
        Split::Test,
        ImageNetOptions {
            bad_files: BadFilePolicy::Skip,
            crop: 224,
        },
    )?;
    assert_eq!(labels(&d)?, vec![0, 1]);
    assert_eq!(d.bad_files().len(), 1);
    assert_eq!(
        (d.bad_files()[0].index, &d.bad_files()[0].path),
        (None, &empty)
    );
    Ok(())
}

#[test]
fn imagenet_layout_errors_and_hash() -> Result {
    let root = tempfile::tempdir()?;
    let e = err_string(ImageNet::open(
        root.path(),
        Split::Test,
        ImageNetOptions::default(),
    ));
    assert_eq!(
        e,
        format!(
            "{}: file not found (an ImageNet split folder of <wnid>/ class folders)",
            root.path().join("val").display()
        )
    );
    std::fs::create_dir(root.path().join("val"))?;
    std::fs::write(
        root.path().join("val/ILSVRC2012_val_00000001.JPEG"),
        stripes()?,
    )?;
    let e = err_string(ImageNet::open(
        root.path(),
        Split::Test,
        ImageNetOptions::default(),
    ));
    assert_eq!(
        e,
        format!(
            "{}: 1 JPEGs lie directly in the folder: sort them into <wnid>/ folders first (as \
             ILSVRC2012's valprep.sh does)",
            root.path().join("val").display()
        )
    );

    // The hash follows file names and sizes.
    let tree = imagenet_tree(&[
        ("train", "n01", "a.JPEG", stripes()?),
        ("train", "n02", "b.JPEG", gray_bands()?),
    ])?;
    let h1 = ImageNet::open(tree.path(), Split::Train, ImageNetOptions::default())?.content_hash();
    let h2 = ImageNet::open(tree.path(), Split::Train, ImageNetOptions::default())?.content_hash();
    assert_eq!(h1, h2);
    std::fs::write(tree.path().join("train/n02/b.JPEG"), stripes()?)?;
    let h3 = ImageNet::open(tree.path(), Split::Train, ImageNetOptions::default())?.content_hash();
    assert_ne!(h1, h3);
    Ok(())
}

// ---------------------------------------------------------------- open_dataset

#[test]
fn open_dataset_from_cli_strings() -> Result {
    let open = |s: &str, split: Split| -> Result<Box<dyn ImageSource>> {
        let spec: DatasetSpec = s.parse()?;
        Ok(open_dataset(&spec, split)?)
    };
    let root = fixtures("");
    let c = open(
        &format!("cifar10:{}", root.join("cifar10").display()),
        Split::Train,
    )?;
    assert_eq!((c.name(), c.len()), ("cifar10/train".into(), 10));
    let m = open(
        &format!("mnist:{}", root.join("mnist").display()),
        Split::Train,
    )?;
    assert_eq!((m.name(), m.len()), ("mnist/train".into(), 3));
    let f = open(
        &format!("fashion-mnist:{}", root.join("fashion-mnist").display()),
        Split::Test,
    )?;
    assert_eq!((f.name(), f.len()), ("fashion-mnist/test".into(), 4));
    let cc = open(
        &format!(
            "cifar10c:{}?corruptions=fog&severities=3,1",
            root.join("cifar10c").display()
        ),
        Split::Test,
    )?;
    assert_eq!((cc.name(), cc.len()), ("cifar10c/fog/s13/every".into(), 8));
    // Through `dyn ImageSource`, CIFAR-10-C images carry their group; others none.
    assert_eq!(cc.group(5).as_deref(), Some("fog/3"));
    assert_eq!(c.group(0), None);
    let Err(e) = open(
        &format!("cifar10:{}", root.join("nowhere").display()),
        Split::Test,
    ) else {
        panic!("opened a folder that does not exist");
    };
    let e = e.to_string();
    assert!(
        e.ends_with(
            "nowhere/test_batch.bin: file not found (a CIFAR-10 binary batch of 3073-byte records)"
        ),
        "{e}"
    );
    Ok(())
}
