//! Class names from the data, for tables, figures and galleries: CIFAR-10's
//! `batches.meta.txt`, the Fashion-MNIST and MNIST names, ImageNet's
//! `LOC_synset_mapping.txt` when present; "class i" where the data has none.

use std::path::Path;

use crate::data::{cifar10, idx, DatasetKind, DatasetSpec};

/// The names of the `num_classes` classes of dataset `data` (a `KIND:PATH?...` spec),
/// by class index.
pub fn class_names(data: &str, num_classes: usize) -> Vec<String> {
    let named = data
        .parse::<DatasetSpec>()
        .ok()
        .and_then(|spec| from_data(&spec))
        .filter(|names| names.len() == num_classes);
    named.unwrap_or_else(|| (0..num_classes).map(|i| format!("class {i}")).collect())
}

fn from_data(spec: &DatasetSpec) -> Option<Vec<String>> {
    let owned = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    match spec.kind {
        DatasetKind::FashionMnist => Some(owned(&idx::FASHION_CLASSES)),
        DatasetKind::Mnist => Some((0..10).map(|d| d.to_string()).collect()),
        DatasetKind::Cifar10 | DatasetKind::Cifar10c => {
            Some(cifar_meta(&spec.root).unwrap_or_else(|| owned(&cifar10::CLASSES)))
        }
        DatasetKind::Imagenet => synset_mapping(&spec.root),
    }
}

/// `batches.meta.txt` of the CIFAR-10 binary distribution: one name per line.
fn cifar_meta(root: &Path) -> Option<Vec<String>> {
    let candidates = [
        root.join("batches.meta.txt"),
        root.join("cifar-10-batches-bin/batches.meta.txt"),
    ];
    let text = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// `LOC_synset_mapping.txt` (`n01440764 tench, Tinca tinca` per line): the first
/// name of each wnid, in sorted wnid order (the labels of the ImageNet reader).
fn synset_mapping(root: &Path) -> Option<Vec<String>> {
    let text = [
        root.join("LOC_synset_mapping.txt"),
        root.join("../LOC_synset_mapping.txt"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())?;
    let mut pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let (wnid, names) = l.trim().split_once(' ')?;
            let first = names.split(',').next()?.trim();
            Some((wnid.to_string(), first.to_string()))
        })
        .collect();
    pairs.sort();
    Some(pairs.into_iter().map(|(_, n)| n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_data_files() {
        let dir = tempfile::tempdir().unwrap();
        // Reversed, so that names read from the file differ from the built-in ones.
        let names: Vec<&str> = crate::data::cifar10::CLASSES
            .iter()
            .rev()
            .copied()
            .collect();
        std::fs::write(
            dir.path().join("batches.meta.txt"),
            names.join("\n") + "\n\n",
        )
        .unwrap();
        let spec = format!("cifar10:{}", dir.path().display());
        assert_eq!(class_names(&spec, 10), names);
        std::fs::write(
            dir.path().join("LOC_synset_mapping.txt"),
            "n01443537 goldfish, Carassius auratus\nn01440764 tench, Tinca tinca\n",
        )
        .unwrap();
        let spec = format!("imagenet:{}", dir.path().display());
        assert_eq!(class_names(&spec, 2), ["tench", "goldfish"]);
        assert_eq!(class_names(&spec, 3), ["class 0", "class 1", "class 2"]);
        assert_eq!(class_names("fashion-mnist", 10)[3], "Dress");
    }
}
