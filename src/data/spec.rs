//! [`DatasetSpec`]: which dataset, where, which split, and the options of the
//! readers that have some — what the CLI's `--data kind:root`, `--split` and
//! `--data-option key=value` flags name, and what a checkpoint's `config.json`
//! records. [`open_dataset`] turns one into a reader.

use std::path::PathBuf;

use super::cifar10::Cifar10;
use super::cifar10c::{Cifar10c, Cifar10cOptions};
use super::idx::{Idx, IdxKind, DEBIAN_FASHION_MNIST_DIR};
use super::imagenet::{ImageNet, ImageNetOptions};
use super::{DataError, ImageSource, Split};

/// The dataset formats `overinterp` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-10-C `.npy` arrays (test only).
    Cifar10c,
    /// Fashion-MNIST IDX files.
    FashionMnist,
    /// MNIST IDX files.
    Mnist,
    /// ILSVRC2012 `train/` and `val/` folders of JPEGs.
    Imagenet,
}

impl DatasetKind {
    /// The canonical spelling, as accepted by `FromStr`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar10c => "cifar10c",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Imagenet => "imagenet",
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "cifar10" | "cifar-10" => Ok(DatasetKind::Cifar10),
            "cifar10c" | "cifar10-c" | "cifar-10-c" => Ok(DatasetKind::Cifar10c),
            "fashion-mnist" | "fashionmnist" => Ok(DatasetKind::FashionMnist),
            "mnist" => Ok(DatasetKind::Mnist),
            "imagenet" | "ilsvrc2012" => Ok(DatasetKind::Imagenet),
            _ => Err(DataError::Invalid(format!(
                "unknown dataset {s:?}: expected cifar10, cifar10c, fashion-mnist, mnist or imagenet"
            ))),
        }
    }
}

/// A dataset to open: kind, folder and reader options; the split is chosen when
/// opening, so one spec names both halves (training opens train and test).
///
/// Written on the command line as `KIND:PATH[?key=value&key=value]`, e.g.
/// `fashion-mnist:/usr/share/datasets/fashion-mnist`,
/// `cifar10c:data/CIFAR-10-C?severities=1,5&sample=2000&seed=0`,
/// `imagenet:/data/ilsvrc2012?crop=299&bad-files=skip`. `fashion-mnist` alone
/// means Debian's folder (`apt-get install dataset-fashion-mnist`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    /// The format.
    pub kind: DatasetKind,
    /// The folder holding the files (for ImageNet: the one holding `train/`, `val/`).
    pub root: PathBuf,
    /// Corruptions, severities and sample (CIFAR-10-C only).
    #[serde(default)]
    pub cifar10c: Cifar10cOptions,
    /// Crop size and bad-file policy (ImageNet only).
    #[serde(default)]
    pub imagenet: ImageNetOptions,
    /// Use only the first `limit` images of each split (`?limit=N`, any kind): quick
    /// experiments and demos. Part of the dataset's name and content hash.
    #[serde(default)]
    pub limit: Option<usize>,
    /// A different cut for the test split (`?test-limit=M`); `limit` when absent.
    #[serde(default)]
    pub test_limit: Option<usize>,
}

impl DatasetSpec {
    /// A spec with default reader options.
    pub fn new(kind: DatasetKind, root: impl Into<PathBuf>) -> Self {
        Self {
            kind,
            root: root.into(),
            cifar10c: Cifar10cOptions::default(),
            imagenet: ImageNetOptions::default(),
            limit: None,
            test_limit: None,
        }
    }

    /// Applies one `key=value` reader option:
    /// CIFAR-10-C `corruptions=fog,snow`, `severities=1,5`, `sample=2000|all`,
    /// `seed=0`; ImageNet `crop=224|299`, `bad-files=fail|skip`.
    pub fn set_option(&mut self, key_value: &str) -> Result<(), DataError> {
        let (key, value) = key_value.split_once('=').ok_or_else(|| {
            DataError::Invalid(format!("data option {key_value:?} is not key=value"))
        })?;
        let bad = |what: &str| {
            DataError::Invalid(format!("data option {key}={value:?}: expected {what}"))
        };
        let wrong_kind = |for_kind: DatasetKind| {
            DataError::Invalid(format!(
                "data option {key} applies to {for_kind}, not to {}",
                self.kind
            ))
        };
        match key {
            "limit" => {
                self.limit = Some(value.parse().map_err(|_| bad("a number of images"))?);
                Ok(())
            }
            "test-limit" => {
                self.test_limit = Some(value.parse().map_err(|_| bad("a number of images"))?);
                Ok(())
            }
            "corruptions" | "severities" | "sample" | "seed"
                if self.kind != DatasetKind::Cifar10c =>
            {
                Err(wrong_kind(DatasetKind::Cifar10c))
            }
            "crop" | "bad-files" if self.kind != DatasetKind::Imagenet => {
                Err(wrong_kind(DatasetKind::Imagenet))
            }
            "corruptions" => {
                self.cifar10c.corruptions = value
                    .split(',')
                    .filter(|c| !c.is_empty() && *c != "all")
                    .map(str::to_string)
                    .collect();
                Ok(())
            }
            "severities" => {
                self.cifar10c.severities = value
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u8>()
                            .map_err(|_| bad("severities such as 1,2,5"))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(())
            }
            "sample" => {
                self.cifar10c.sample = match value {
                    "all" => None,
                    n => Some(n.parse().map_err(|_| bad("a number of images or `all`"))?),
                };
                Ok(())
            }
            "seed" => {
                self.cifar10c.seed = value.parse().map_err(|_| bad("an unsigned integer"))?;
                Ok(())
            }
            "crop" => {
                self.imagenet.crop = value
                    .parse()
                    .map_err(|_| bad("a crop side such as 224 or 299"))?;
                Ok(())
            }
            "bad-files" => {
                self.imagenet.bad_files = value.parse()?;
                Ok(())
            }
            _ => Err(DataError::Invalid(format!(
                "unknown data option {key:?}: known are limit, test-limit (any dataset), corruptions, \
                 severities, sample, seed (cifar10c) and crop, bad-files (imagenet)"
            ))),
        }
    }
}

impl std::str::FromStr for DatasetSpec {
    type Err = DataError;
    /// Parses `KIND:PATH[?key=value&...]` (see [`DatasetSpec`]).
    fn from_str(data: &str) -> Result<Self, DataError> {
        let (main, options) = match data.split_once('?') {
            Some((m, o)) => (m, Some(o)),
            None => (data, None),
        };
        let mut spec = match main.split_once(':') {
            Some((k, r)) if !r.is_empty() => Self::new(k.parse()?, r),
            _ => {
                let kind = main.trim_end_matches(':').parse::<DatasetKind>()?;
                if kind != DatasetKind::FashionMnist {
                    return Err(DataError::Invalid(format!(
                        "dataset {main:?} names no folder: write {kind}:/path/to/{kind}"
                    )));
                }
                Self::new(kind, DEBIAN_FASHION_MNIST_DIR)
            }
        };
        for kv in options
            .into_iter()
            .flat_map(|o| o.split('&'))
            .filter(|kv| !kv.is_empty())
        {
            spec.set_option(kv)?;
        }
        Ok(spec)
    }
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.root.display())
    }
}

/// Opens `split` of the dataset `spec` names.
pub fn open_dataset(spec: &DatasetSpec, split: Split) -> Result<Box<dyn ImageSource>, DataError> {
    let source: Box<dyn ImageSource> = match spec.kind {
        DatasetKind::Cifar10 => Box::new(Cifar10::open(&spec.root, split)?),
        DatasetKind::Cifar10c => Box::new(Cifar10c::open(&spec.root, split, &spec.cifar10c)?),
        DatasetKind::FashionMnist => Box::new(Idx::open(&spec.root, split, IdxKind::FashionMnist)?),
        DatasetKind::Mnist => Box::new(Idx::open(&spec.root, split, IdxKind::Mnist)?),
        DatasetKind::Imagenet => Box::new(ImageNet::open(&spec.root, split, spec.imagenet)?),
    };
    let limit = match split {
        Split::Test => spec.test_limit.or(spec.limit),
        Split::Train => spec.limit,
    };
    Ok(match limit {
        Some(n) if n < source.len() => Box::new(super::Limited::new(source, n)),
        _ => source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<DatasetSpec, DataError> {
        s.parse()
    }

    #[test]
    fn parses_cli_strings() {
        let s = spec("fashion-mnist:/usr/share/datasets/fashion-mnist").unwrap();
        assert_eq!(
            s,
            DatasetSpec::new(DatasetKind::FashionMnist, DEBIAN_FASHION_MNIST_DIR)
        );
        assert_eq!(spec("fashion-mnist").unwrap(), s);
        assert_eq!(
            spec("CIFAR-10:data/c").unwrap(),
            DatasetSpec::new(DatasetKind::Cifar10, "data/c")
        );
        let c =
            spec("cifar10c:/d/CIFAR-10-C?corruptions=fog,snow&severities=1,5&sample=2000&seed=3")
                .unwrap();
        assert_eq!(c.root, PathBuf::from("/d/CIFAR-10-C"));
        assert_eq!(
            c.cifar10c,
            Cifar10cOptions {
                corruptions: vec!["fog".into(), "snow".into()],
                severities: vec![1, 5],
                sample: Some(2000),
                seed: 3
            }
        );
        let i = spec("imagenet:/d/ilsvrc?crop=299&bad-files=skip").unwrap();
        assert_eq!(
            i.imagenet,
            ImageNetOptions {
                crop: 299,
                bad_files: crate::data::BadFilePolicy::Skip
            }
        );
        assert_eq!(i.to_string(), "imagenet:/d/ilsvrc");
        assert_eq!("val".parse::<Split>().unwrap(), Split::Test);
    }

    #[test]
    fn rejects_bad_cli_strings_with_the_reason() {
        let e = |d: &str| spec(d).unwrap_err().to_string();
        assert_eq!(
            e("cifar100:/x"),
            "unknown dataset \"cifar100\": expected cifar10, cifar10c, fashion-mnist, mnist or imagenet"
        );
        assert_eq!(
            e("cifar10"),
            "dataset \"cifar10\" names no folder: write cifar10:/path/to/cifar10"
        );
        assert_eq!(
            e("cifar10:/x?crop=224"),
            "data option crop applies to imagenet, not to cifar10"
        );
        assert_eq!(
            e("imagenet:/x?nonsense"),
            "data option \"nonsense\" is not key=value"
        );
        assert_eq!(
            e("cifar10c:/x?severities=1,x"),
            "data option severities=\"1,x\": expected severities such as 1,2,5"
        );
        assert_eq!(
            "dev".parse::<Split>().unwrap_err().to_string(),
            "unknown split \"dev\": expected `train` or `test` (ImageNet's `val` is `test`)"
        );
    }

    #[test]
    fn spec_round_trips_through_json() {
        let s = spec("cifar10c:/d?sample=20&seed=1").unwrap();
        let back: DatasetSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
