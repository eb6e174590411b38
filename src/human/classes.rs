//! Class names for the answer buttons: a participant needs words,
//! not label numbers. The names are the datasets' published ones.

/// Fashion-MNIST's classes, in label order (Xiao et al., 2017): the IDX reader's.
pub const FASHION_MNIST: [&str; 10] = crate::data::idx::FASHION_CLASSES;

/// CIFAR-10's classes, in label order (`batches.meta.txt`): the CIFAR-10 reader's.
pub const CIFAR10: [&str; 10] = crate::data::cifar10::CLASSES;

/// MNIST's classes: the digits.
pub const MNIST: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Names of `num_classes` classes of the dataset a store names (`fashion-mnist/test`,
/// `cifar10/test[:500]`, `cifar10c/...`), or `None` when the dataset has no known
/// names (give them with `--class-names`).
pub fn known_class_names(dataset: &str, num_classes: usize) -> Option<Vec<String>> {
    let kind = dataset.split(['/', '[', ':']).next().unwrap_or(dataset);
    let names: &[&str] = match kind {
        "fashion-mnist" => &FASHION_MNIST,
        "mnist" => &MNIST,
        "cifar10" | "cifar10c" => &CIFAR10,
        _ => return None,
    };
    (names.len() >= num_classes).then(|| names.iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_store_dataset_name() {
        let f = known_class_names("fashion-mnist/test[:128]", 10).unwrap();
        assert_eq!(f[0], "T-shirt/top");
        assert_eq!(f[9], "Ankle boot");
        assert_eq!(known_class_names("cifar10c/fog/3", 10).unwrap()[3], "cat");
        assert_eq!(known_class_names("mnist/train", 10).unwrap()[7], "7");
        assert!(known_class_names("imagenet/val", 1000).is_none());
    }
}
